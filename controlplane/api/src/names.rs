//! Upstream's string validators (`k8s.io/apimachinery/pkg/util/validation`), with their
//! exact error strings. Each returns the list of problems (empty when valid), like
//! upstream's `IsDNS1123Label` and friends, so callers can wrap them in field errors.
//!
//! The regexes are matched by hand (the crate has no regex dependency); each matcher
//! names the regex it implements, which is also quoted verbatim in the messages.

pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
pub const DNS1035_LABEL_MAX_LENGTH: usize = 63;
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Upstream's `validation.RegexError`. The double space before `or` is upstream's, and
/// clients match these strings, so it is kept.
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

/// Upstream's `validation.MaxLenError`.
pub fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// Upstream's `validation.EmptyError`.
pub fn empty_error() -> &'static str {
    "must be non-empty"
}

fn alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns1123_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && alnum_lower(b[0])
        && alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*)?` anchored at both ends (the qualified-name regex).
fn is_qualified_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Upstream's `IsDNS1123Label` (namespace names, container names, port names...).
pub fn is_dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !is_dns1123_label_shape(s) {
        errs.push(regex_error(
            DNS1123_LABEL_ERR,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// Upstream's `IsDNS1123Subdomain` (most object names, label key prefixes).
pub fn is_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !s.split('.').all(is_dns1123_label_shape) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Upstream's `IsDNS1035Label` (Service names: they become DNS names that must not
/// start with a digit).
pub fn is_dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1035_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1035_LABEL_MAX_LENGTH));
    }
    if !(is_dns1123_label_shape(s) && s.as_bytes()[0].is_ascii_lowercase()) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// Upstream's `IsQualifiedName` (label keys, annotation keys, finalizer names):
/// an optional DNS-1123 subdomain prefix and `/`, then a name of at most 63 characters.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("prefix part {}", empty_error()));
            } else {
                for m in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("name part {}", empty_error()));
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !name.is_empty() && !is_qualified_shape(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Upstream's `IsValidLabelValue`: empty, or a qualified-name-shaped string of at most
/// 63 characters.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !value.is_empty() && !is_qualified_shape(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Upstream's `IsValidPortName` (IANA_SVC_NAME): 1-15 characters, lower-case
/// alphanumerics or '-', at least one letter, no leading/trailing/double hyphen.
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    // `^[-a-z0-9]+$`: the empty string fails here too.
    if port.is_empty() || !port.bytes().all(|c| alnum_lower(c) || c == b'-') {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// Upstream's `IsValidPortNum`.
pub fn is_valid_port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".to_string()]
    }
}

/// Characters of upstream's `utilrand.String`: no vowels (no accidental words) and no
/// look-alikes (0/o, 1/l/i, 3/e).
pub const GENERATE_NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Upstream's `MaxGeneratedNameLength`: 63 minus the 5 random characters.
pub const MAX_GENERATED_NAME_LENGTH: usize = 63 - 5;

/// Upstream's `SimpleNameGenerator.GenerateName`: the base (cut to 58 bytes) plus 5
/// characters from [`GENERATE_NAME_ALPHABET`]. `random_index(n)` must return a random
/// number below `n`; the caller supplies the randomness so this crate stays pure. On a
/// name collision the server retries (upstream: up to 7 attempts since v1.32).
pub fn generate_name(base: &str, mut random_index: impl FnMut(usize) -> usize) -> String {
    let mut cut = base.len().min(MAX_GENERATED_NAME_LENGTH);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut name = base[..cut].to_string();
    for _ in 0..5 {
        let i = random_index(GENERATE_NAME_ALPHABET.len()) % GENERATE_NAME_ALPHABET.len();
        name.push(GENERATE_NAME_ALPHABET[i] as char);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL_REGEX_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    const SUBDOMAIN_REGEX_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const QNAME_REGEX_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

    #[test]
    fn dns1123_label() {
        let long = "a".repeat(64);
        let cases: &[(&str, &[&str])] = &[
            ("web", &[]),
            ("a", &[]),
            ("0", &[]),
            ("my-name-1", &[]),
            (&long[..63], &[]),
            (&long, &["must be no more than 63 characters"]),
            ("", &[LABEL_REGEX_MSG]),
            ("Web", &[LABEL_REGEX_MSG]),
            ("-web", &[LABEL_REGEX_MSG]),
            ("web-", &[LABEL_REGEX_MSG]),
            ("a.b", &[LABEL_REGEX_MSG]),
            ("a_b", &[LABEL_REGEX_MSG]),
        ];
        for (input, want) in cases {
            assert_eq!(is_dns1123_label(input), *want, "{input:?}");
        }
    }

    #[test]
    fn dns1123_subdomain() {
        let cases: &[(&str, &[&str])] = &[
            ("example.com", &[]),
            ("kube-system", &[]),
            ("a.b.c", &[]),
            ("a..b", &[SUBDOMAIN_REGEX_MSG]),
            (".a", &[SUBDOMAIN_REGEX_MSG]),
            ("A.com", &[SUBDOMAIN_REGEX_MSG]),
            ("", &[SUBDOMAIN_REGEX_MSG]),
        ];
        for (input, want) in cases {
            assert_eq!(is_dns1123_subdomain(input), *want, "{input:?}");
        }
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(60));
        assert_eq!(
            is_dns1123_subdomain(&long),
            ["must be no more than 253 characters"]
        );
    }

    #[test]
    fn dns1035_label() {
        let msg = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
        let cases: &[(&str, &[&str])] = &[
            ("web", &[]),
            ("w1", &[]),
            ("1web", &[msg]),
            ("web.x", &[msg]),
        ];
        for (input, want) in cases {
            assert_eq!(is_dns1035_label(input), *want, "{input:?}");
        }
    }

    #[test]
    fn qualified_name() {
        let long = "a".repeat(64);
        let cases: Vec<(String, Vec<String>)> = vec![
            ("app".into(), vec![]),
            ("app.kubernetes.io/name".into(), vec![]),
            ("My_Name.1".into(), vec![]),
            ("/name".into(), vec!["prefix part must be non-empty".into()]),
            ("example.com/".into(), vec!["name part must be non-empty".into()]),
            (long.clone(), vec!["name part must be no more than 63 characters".into()]),
            ("-app".into(), vec![QNAME_REGEX_MSG.into()]),
            ("Example.com/x".into(), vec![format!("prefix part {SUBDOMAIN_REGEX_MSG}")]),
            (
                "a/b/c".into(),
                vec!["a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".into()],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(is_qualified_name(&input), want, "{input:?}");
        }
    }

    #[test]
    fn label_value() {
        let msg = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
        let long = "v".repeat(64);
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("web", &[]),
            ("v1.2_3-x", &[]),
            ("-x", &[msg]),
            ("a b", &[msg]),
            ("x/y", &[msg]),
            (&long, &["must be no more than 63 characters"]),
        ];
        for (input, want) in cases {
            assert_eq!(is_valid_label_value(input), *want, "{input:?}");
        }
    }

    #[test]
    fn port_names_and_numbers() {
        let cases: &[(&str, usize)] = &[
            ("http", 0),
            ("h2c", 0),
            ("metrics-1", 0),
            ("8080", 1),
            ("HTTP", 2), // upper case fails both the charset and the one-letter rule upstream
            ("a--b", 1),
            ("-http", 1),
            ("abcdefghijklmnop", 1),
            ("", 2),
        ];
        for (input, n) in cases {
            assert_eq!(
                is_valid_port_name(input).len(),
                *n,
                "{input:?}: {:?}",
                is_valid_port_name(input)
            );
        }
        for (p, ok) in [
            (0, false),
            (1, true),
            (65535, true),
            (65536, false),
            (-1, false),
        ] {
            assert_eq!(is_valid_port_num(p).is_empty(), ok, "{p}");
        }
    }

    #[test]
    fn generated_names() {
        let long = "a".repeat(70);
        let cases: Vec<(&str, Vec<usize>, String)> = vec![
            ("web-", vec![0, 1, 2, 3, 4], "web-bcdfg".into()),
            // An out-of-range draw wraps around instead of panicking.
            ("web-", vec![26, 26, 25, 0, 27], "web-998bb".into()),
            ("", vec![5, 5, 5, 5, 5], "hhhhh".into()),
            (&long, vec![0; 5], format!("{}bbbbb", "a".repeat(58))),
        ];
        for (base, draws, want) in cases {
            let mut it = draws.into_iter();
            let got = generate_name(base, |n| {
                assert_eq!(n, 27, "the alphabet has 27 characters");
                it.next().unwrap()
            });
            assert_eq!(got, want, "{base:?}");
            assert!(got.len() <= 63);
        }
    }
}
