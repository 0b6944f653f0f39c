//! Shell-style patterns on names and paths (`*` within a segment, `**`
//! across segments, `?` one character): `--prefetch-on-open` here, and
//! `--include`/`--exclude` of `import` and `sync`. A 30-line matcher
//! rather than a regex-based crate: the patterns are small.

/// Shell-style match: `*` any run within a segment, `**` any run at all,
/// `?` one character other than `/`.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    fn go(p: &[u8], k: &[u8]) -> bool {
        match p.first() {
            None => k.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                (0..=k.len()).any(|i| go(rest, &k[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=k.len() {
                    if go(rest, &k[i..]) {
                        return true;
                    }
                    if k.get(i) == Some(&b'/') {
                        break;
                    }
                }
                false
            }
            Some(b'?') => k.first().is_some_and(|c| *c != b'/') && go(&p[1..], &k[1..]),
            Some(c) => k.first() == Some(c) && go(&p[1..], &k[1..]),
        }
    }
    go(pattern.as_bytes(), key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(glob_match("*.safetensors", "a.safetensors"));
        assert!(!glob_match("*.safetensors", "lora/a.safetensors"));
        assert!(glob_match("**.safetensors", "lora/a.safetensors"));
        assert!(glob_match("lora/**", "lora/x/y.bin"));
        assert!(glob_match("ckpt-?.bin", "ckpt-7.bin"));
        assert!(!glob_match("ckpt-?.bin", "ckpt-10.bin"));
    }
}
