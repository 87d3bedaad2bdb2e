#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmail_milter::fuzzing::frame(data));
