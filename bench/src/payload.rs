//! Event payloads: a JSON object with a sequence number and the send time
//! (ns since the Unix epoch), padded to a fixed size. Every target gets the
//! same bytes; [`scan`] finds them in whatever frame a target wraps them in
//! (a Switchyard `event` frame, a NATS `MSG` batch, a bare message).

/// A payload of `size` bytes (at least its head and tail).
pub fn make(seq: u64, sent_ns: u64, size: usize) -> String {
    let head = format!("{{\"s\":{seq},\"t\":{sent_ns},\"p\":\"");
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

/// Calls `found(seq, sent_ns)` for every payload in `frame`, in order.
pub fn scan(frame: &[u8], mut found: impl FnMut(u64, u64)) {
    let mut rest = frame;
    while let Some(i) = find(rest, b"\"s\":") {
        rest = &rest[i + 4..];
        let (seq, used) = digits(rest);
        rest = &rest[used..];
        if used == 0 {
            continue;
        }
        let Some(j) = find(rest, b"\"t\":") else {
            return;
        };
        rest = &rest[j + 4..];
        let (sent, used) = digits(rest);
        rest = &rest[used..];
        if used > 0 {
            found(seq, sent);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn digits(s: &[u8]) -> (u64, usize) {
    let mut n: u64 = 0;
    let mut used = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        used += 1;
    }
    (n, used)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(frame: &str) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        scan(frame.as_bytes(), |s, t| v.push((s, t)));
        v
    }

    #[test]
    fn payloads_have_the_requested_size_and_scan_back() {
        let p = make(42, 1_700_000_000_123_456_789, 256);
        assert_eq!(p.len(), 256);
        assert_eq!(all(&p), [(42, 1_700_000_000_123_456_789)]);
        serde_json::from_str::<serde_json::Value>(&p).expect("valid JSON");
    }

    #[test]
    fn payloads_are_found_in_every_target_frame() {
        let p1 = make(1, 10, 64);
        let p2 = make(2, 20, 64);
        let json = format!(
            "{{\"op\":\"event\",\"topic\":\"bench.0\",\"id\":\"a-1\",\"event\":\"message\",\"data\":{p1}}}"
        );
        assert_eq!(all(&json), [(1, 10)]);
        let nats = format!("MSG bench.0 1 64\r\n{p1}\r\nMSG bench.0 1 64\r\n{p2}\r\nPING\r\n");
        assert_eq!(all(&nats), [(1, 10), (2, 20)]);
        // Keys re-ordered by a server that re-serialises the object.
        assert_eq!(all("{\"p\":\"xx\",\"s\":7,\"t\":70}"), [(7, 70)]);
    }
}
