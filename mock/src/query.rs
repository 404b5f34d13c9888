//! Minimal query-string / path-segment decoding (enough for `idProperty`, `properties`,
//! `archived`, paging), to avoid a URL crate.

pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let pairs = q
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect();
        Query(pairs)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Repeated and/or comma-separated values (`properties=a,b&properties=c`).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(percent_decode("a%40b.c", false), "a@b.c");
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
        let q = Query::parse(Some(
            "idProperty=email&properties=a,b&properties=c&archived=TRUE",
        ));
        assert_eq!(q.get("idProperty"), Some("email"));
        assert_eq!(q.list("properties"), vec!["a", "b", "c"]);
        assert!(q.flag("archived"));
        assert!(!q.flag("nope"));
    }
}
