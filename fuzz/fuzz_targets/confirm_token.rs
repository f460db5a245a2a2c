//! Confirmation tokens (`clarion_confirm::token`): any text given to `verify` is
//! refused or read without a panic, and a token is accepted only if it is exactly
//! one that `mint` made; a minted token always verifies before its expiry.
#![no_main]

use clarion_confirm::Keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = Keys::new(b"fuzzing secret, thirty-two bytes") else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = keys.verify(&text, 0) {
        // Only our own tokens verify, and they read back as minted.
        assert_eq!(keys.mint(&t.case, &t.recipient, t.expires), text);
    }
    if data.len() >= 28 {
        let mut case = [0u8; 16];
        case.copy_from_slice(&data[..16]);
        let mut rid = [0u8; 8];
        rid.copy_from_slice(&data[16..24]);
        let exp = u64::from(u32::from_be_bytes([data[24], data[25], data[26], data[27]]));
        let case = clarion_confirm::CaseId(case);
        let rid = clarion_confirm::RecipientId(rid);
        let minted = keys.mint(&case, &rid, exp);
        let back = keys.verify(&minted, exp).expect("a minted token verifies");
        assert_eq!((back.case, back.recipient, back.expires), (case, rid, exp));
    }
});
