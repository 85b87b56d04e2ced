//! Reading a request body once its sender is known, bounded in size and
//! in time: an unauthenticated or slow client must not pin memory.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::{BodyExt as _, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads `body` as JSON: 413 over `max` bytes, 408 if it has not all
/// arrived within `within`, 400 if it is not the JSON expected.
pub async fn read_json<T: DeserializeOwned>(
    body: Body,
    max: usize,
    within: Duration,
) -> Result<T, ApiError> {
    let bytes = match tokio::time::timeout(within, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {max} bytes"),
            ));
        }
        Ok(Err(e)) => return Err(ApiError::bad_request(format!("reading the body: {e}"))),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not arrive within {} s", within.as_secs()),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}
