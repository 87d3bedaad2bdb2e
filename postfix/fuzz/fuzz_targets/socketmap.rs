#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmail_postfix::fuzzing::socketmap(data));
