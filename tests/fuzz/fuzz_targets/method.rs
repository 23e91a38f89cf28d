#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lepus::fuzz::method(data));
