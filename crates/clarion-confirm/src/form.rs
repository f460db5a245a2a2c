//! `application/x-www-form-urlencoded` bodies, read with a bound on the number of
//! fields and on each one's size: the listener's own forms and the providers'
//! callbacks (Twilio posts its parameters this way) are both read through here.

/// The most fields a body may have.
pub const MAX_FIELDS: usize = 64;
/// The longest name or value, in bytes once decoded.
pub const MAX_FIELD_BYTES: usize = 4096;

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("more than {MAX_FIELDS} fields")]
    TooManyFields,
    #[error("a field is longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLong,
}

/// The body's fields, in order, decoded (`+` is a space, `%XX` a byte; invalid
/// UTF-8 is replaced, as browsers and providers never send it).
pub fn parse(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.len() == MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        if k.len() > MAX_FIELD_BYTES || v.len() > MAX_FIELD_BYTES {
            return Err(FormError::FieldTooLong);
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

/// The first value of `name`.
pub fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_bounds_them() {
        let f = parse(b"From=%2B447700900123&Body=ok+482193&Body=again").expect("valid");
        assert_eq!(get(&f, "From"), Some("+447700900123"));
        assert_eq!(get(&f, "Body"), Some("ok 482193"));
        assert_eq!(get(&f, "To"), None);
        let many = "a=1&".repeat(MAX_FIELDS + 1);
        assert_eq!(parse(many.as_bytes()), Err(FormError::TooManyFields));
        let long = format!("a={}", "x".repeat(MAX_FIELD_BYTES + 1));
        assert_eq!(parse(long.as_bytes()), Err(FormError::FieldTooLong));
        assert!(parse(b"%ff%fe=\xff").is_ok());
    }
}
