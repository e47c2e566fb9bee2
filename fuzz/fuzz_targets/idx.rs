#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| linear_softmax_fuzz::idx(data));
