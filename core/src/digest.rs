//! Payload digests: the worker skips a record whose payload has the same digest as the
//! last one the CRM accepted, so nothing is sent for rows that changed in ways the
//! serializer does not see.
//!
//! The digest must not depend on how the payload happened to be built: `jsonb` already
//! orders keys its own way, serde_json's map order depends on a cargo feature
//! (`preserve_order`) that any crate in the build can switch on. So keys are sorted here,
//! explicitly, at every level.

use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// Canonical JSON: object keys sorted (recursively), no insignificant whitespace, numbers as serde_json prints them.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out).expect("writing to a Vec cannot fail");
    // Only serde_json's output and ASCII punctuation went in, and both are UTF-8.
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// SHA-256 of canonical_json(v).
pub fn digest(v: &serde_json::Value) -> [u8; 32] {
    // Streams into the hasher: no intermediate string for large payloads.
    let mut hasher = Sha256::new();
    write_canonical(v, &mut hasher).expect("hashing cannot fail");
    hasher.finalize().into()
}

fn write_canonical(v: &serde_json::Value, out: &mut impl Write) -> io::Result<()> {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            // Rust orders `str` by bytes, which for UTF-8 is code-point order: stable
            // across platforms and serde_json versions.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.write_all(b"{")?;
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, key)?;
                out.write_all(b":")?;
                write_canonical(value, out)?;
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(out, scalar)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{ "b": 1, "a": [ 3, 2, 1 ], "c": { "z": null, "y": true } }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":[3,2,1],"b":1,"c":{"y":true,"z":null}}"#
        );
    }

    #[test]
    fn nested_objects_inside_arrays_are_sorted() {
        let v = json!([{"b": {"d": 1, "c": 2}, "a": 0}, []]);
        assert_eq!(canonical_json(&v), r#"[{"a":0,"b":{"c":2,"d":1}},[]]"#);
    }

    #[test]
    fn unicode_is_kept_raw_and_keys_sort_by_code_point() {
        let v = json!({"é": "ünï", "z": "日本", "a\"q": "tab\there", "Z": "\u{1F600}"});
        // 'Z' (0x5A) < 'a' (0x61) < 'z' (0x7A) < 'é' (0xE9)
        assert_eq!(
            canonical_json(&v),
            "{\"Z\":\"\u{1F600}\",\"a\\\"q\":\"tab\\there\",\"z\":\"日本\",\"é\":\"ünï\"}"
        );
    }

    #[test]
    fn numbers_print_as_serde_json_prints_them() {
        let v = json!({"i": -3, "u": 18446744073709551615u64, "f": 1.5, "e": 1e-7});
        assert_eq!(
            canonical_json(&v),
            r#"{"e":1e-7,"f":1.5,"i":-3,"u":18446744073709551615}"#
        );
    }

    #[test]
    fn scalars_are_canonical_too() {
        assert_eq!(canonical_json(&json!(null)), "null");
        assert_eq!(canonical_json(&json!("x")), r#""x""#);
        assert_eq!(canonical_json(&json!({})), "{}");
    }

    #[test]
    fn digest_ignores_key_order_and_formatting() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"email":"a@b.c","n":{"x":1,"y":2}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str("{\n  \"n\": {\"y\": 2, \"x\": 1},\n  \"email\": \"a@b.c\"\n}")
                .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"email": "a@b.c"})));
        // Types matter: "1" is not 1.
        assert_ne!(digest(&json!({"n": 1})), digest(&json!({"n": "1"})));
    }

    #[test]
    fn digest_is_sha256_of_the_canonical_text() {
        // Pinned so that a change of canonical form (which would resend every record
        // once) cannot slip in unnoticed. sha256("{\"a\":1}").
        let hex: String = digest(&json!({"a": 1}))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
        );
        assert_eq!(
            digest(&json!({"a": 1})),
            <[u8; 32]>::from(Sha256::digest(b"{\"a\":1}"))
        );
    }
}
