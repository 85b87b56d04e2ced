#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_host::fuzzing::nats_wire(data));
