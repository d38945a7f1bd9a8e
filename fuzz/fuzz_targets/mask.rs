//! The masking lexer (`agent/src/mask.rs`), the privacy boundary.
//!
//! Even seed byte: the rest as arbitrary text. Masking must be idempotent
//! (`mask(mask(x)) == mask(x)`), append to `out` without touching what is
//! there, and leave no literal at all in its output (`assert_no_literal`).
//!
//! Odd seed byte: the rest drives a [`Skeleton`], SQL whose literal values
//! are marked (as in mask.rs's property tests): no marked value may survive,
//! and two renderings with different values must mask to the same bytes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use querywatch_agent::mask::{mask, mask_into};
use querywatch_fuzz::{Skeleton, assert_no_literal, leaks_marked_literal, split_first};

fuzz_target!(|data: &[u8]| {
    let (seed, rest) = split_first(data);
    if seed % 2 == 0 {
        let input = String::from_utf8_lossy(rest);
        let once = mask(&input);
        assert_eq!(mask(&once), once, "not idempotent for {input:?}");
        assert_no_literal(&input, &once);
        let mut out = String::from("kept ");
        mask_into(&input, &mut out);
        assert_eq!(out.strip_prefix("kept "), Some(once.as_str()), "mask_into disturbed what was in out");
    } else {
        let mut u = Unstructured::new(rest);
        let Ok(skeleton) = Skeleton::arbitrary(&mut u) else { return };
        let salt = u32::from(seed).wrapping_mul(0x9E37_79B9);
        let input = skeleton.render(salt);
        let once = mask(&input);
        assert!(!leaks_marked_literal(&once), "literal leaked\ninput: {input:?}\noutput: {once:?}");
        assert_no_literal(&input, &once);
        assert_eq!(mask(&once), once, "not idempotent for {input:?}");
        let other = skeleton.render(salt ^ 0x5A5A_1234);
        assert_eq!(mask(&other), once, "literal values changed the shape\n{input:?}\n{other:?}");
    }
});
