//! Secrets never leave the process: text that goes to a log, a stored record or another process
//! (the coordinator) is passed through [`redact`] first.
//!
//! Two layers, because a secret can reach a message in ways nobody foresaw (a JVM echoing its
//! options, a tool printing its command line):
//! - every secret the process reads (a password file's content) is [`register`]ed, and each
//!   occurrence of it is replaced, whatever surrounds it;
//! - values of password-like settings (`…password=…`, `…Password: …`, `secret_key=…`) are
//!   replaced too, for secrets the process never read itself.
//!
//! [`Redacting`] applies this to a writer (the log output).

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Shorter values are not registered: replacing every occurrence of two or three characters would
/// garble ordinary text, and such a secret is no secret anyway.
pub const MIN_SECRET_LEN: usize = 4;

/// Registered secrets. Process-wide on purpose: whatever code formats a message, the secret is
/// known wherever that message ends up.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `secret` so that [`redact`] replaces it from now on. Surrounding whitespace is
/// ignored (password files end with a newline).
pub fn register(secret: &str) {
    let s = secret.trim();
    if s.len() < MIN_SECRET_LEN {
        return;
    }
    let mut v = SECRETS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
        // Longest first, so a secret that contains another is replaced whole.
        v.sort_by_key(|x| std::cmp::Reverse(x.len()));
    }
}

/// Key words whose setting's value is a secret (matched case-insensitively inside a key:
/// `trustStorePassword`, `AWS_SECRET_ACCESS_KEY`, `password`).
const SECRET_KEYS: &[&str] = &["password", "passwd", "secret", "credential"];

/// Key endings that name where a secret is kept, not the secret (`jmx_password_file: /etc/x`).
const NOT_SECRET_SUFFIXES: &[&str] = &["file", "path", "dir"];

/// `text` with every registered secret and every value of a password-like setting replaced by
/// [`REDACTED`]. Borrowed when there was nothing to replace.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let secrets = SECRETS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
    }
    match redact_settings(&out) {
        Some(r) => Cow::Owned(r),
        None => out,
    }
}

/// Replaces the values of `<key>=<value>` and `<key>: <value>` where the key contains a
/// [`SECRET_KEYS`] word; `None` when there is none.
fn redact_settings(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let b = text.as_bytes();
    let key_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-');
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    for word in SECRET_KEYS {
        let mut from = 0;
        while let Some(at) = lower[from..].find(word).map(|i| i + from) {
            from = at + word.len();
            // The whole key around the word.
            let mut end = at + word.len();
            while end < b.len() && key_char(b[end]) {
                end += 1;
            }
            let key = &lower[..end];
            if NOT_SECRET_SUFFIXES.iter().any(|s| key.ends_with(s)) {
                continue;
            }
            // `=` or `:` (spaces around it allowed), then the value up to a separator.
            let mut i = end;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() || !(b[i] == b'=' || b[i] == b':') {
                continue;
            }
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'"' | b'\'' | b',' | b';' | b')') {
                i += 1;
            }
            if i > start && &text[start..i] != REDACTED {
                cuts.push((start, i));
            }
        }
    }
    if cuts.is_empty() {
        return None;
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (s, e) in cuts {
        if s < pos {
            continue;
        }
        out.push_str(&text[pos..s]);
        out.push_str(REDACTED);
        pos = e;
    }
    out.push_str(&text[pos..]);
    Some(out)
}

/// A writer that redacts what goes through it, one `write` call at a time (a log line is one).
#[derive(Debug)]
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                self.0.write_all(redact(s).as_bytes())?;
                Ok(buf.len())
            }
            Err(_) => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_and_password_settings_are_replaced() {
        register("Reg1stered-Secret\n");
        register("abc");
        let t = "nodetool failed: Picked up JAVA_TOOL_OPTIONS: -Djavax.net.ssl.trustStorePassword=ts-x1 -Djavax.net.ssl.trustStore=/etc/ts.jks / and Reg1stered-Secret in the middle";
        let r = redact(t);
        assert!(!r.contains("ts-x1") && !r.contains("Reg1stered-Secret"), "{r}");
        assert!(r.contains("trustStore=/etc/ts.jks") && r.contains("trustStorePassword=<redacted>"), "{r}");
        assert_eq!(redact("abc and abcd"), "abc and abcd", "short values are not registered");
        assert_eq!(redact("password = s3cr=t, next"), "password = <redacted>, next");
        assert_eq!(redact("AWS_SECRET_ACCESS_KEY: wJalr/K7"), "AWS_SECRET_ACCESS_KEY: <redacted>");
        for plain in [
            "jmx_password_file /etc/cassette/jmx.password does not exist",
            "set jmx_password_file: /etc/x",
            "secrets never leave the process",
            "initial_token: 1,2",
        ] {
            assert_eq!(redact(plain), plain);
        }
        let mut w = Redacting(Vec::new());
        w.write_all(b"level=WARN password=hunter22 done\n").unwrap();
        assert_eq!(String::from_utf8(w.0).unwrap(), "level=WARN password=<redacted> done\n");
    }
}
