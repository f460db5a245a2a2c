//! The inbound listener's parsers (`clarion_confirm`): routing a method and path,
//! reading a form body, an SMS reply and `X-Forwarded-For`. None panics on any
//! input, and each keeps its bounds.
#![no_main]

use clarion_confirm::{form, forwarded, reply, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 4 {
        0 => {
            let method = match selector / 4 % 4 {
                0 => route::Method::Get,
                1 => route::Method::Head,
                2 => route::Method::Post,
                _ => route::Method::Other,
            };
            match route::route(method, &text) {
                route::Route::Page { token } | route::Route::Confirm { token } => {
                    assert!(text.contains(token) && token.len() <= 128);
                }
                route::Route::Sms { target, provider } => {
                    assert!(!target.contains('/') && !provider.contains('/'));
                }
                _ => {}
            }
        }
        1 => {
            if let Ok(fields) = form::parse(rest) {
                assert!(fields.len() <= form::MAX_FIELDS);
                assert!(fields.iter().all(|(k, v)| {
                    k.len() <= form::MAX_FIELD_BYTES && v.len() <= form::MAX_FIELD_BYTES
                }));
            }
        }
        2 => match reply::parse(&text) {
            reply::Reply::Code(c) => {
                assert!(c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()));
                assert!(!reply::is_reserved(&c));
            }
            reply::Reply::OptOut(k) => assert!(reply::OPT_OUT.contains(&k)),
            _ => {}
        },
        _ => {
            let trusted = forwarded::Trusted::parse(&["10.0.0.0/8", "::1"]).expect("valid");
            let peer: std::net::IpAddr = [10, 0, 0, 1].into();
            let headers: Vec<&str> = text.split('\n').collect();
            let _ = trusted.client(peer, &headers);
            let _ = trusted.proto(peer, headers.first().copied());
            let _ = trusted.host(peer, headers.first().copied());
        }
    }
});
