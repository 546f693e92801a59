//! Semantic versions for the `sem_ver` operation, with the rules flagd inherits from Go's
//! `golang.org/x/mod/semver`: an optional `v` (or `V`) prefix, `MAJOR[.MINOR[.PATCH]]` where the
//! short forms mean `.0`, a pre-release after `-` (full form only), build metadata after `+`
//! ignored in comparisons, and no leading zeros in numeric parts.

use std::cmp::Ordering;

/// A parsed version; build metadata is dropped because it never affects comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Box<[Ident]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ident {
    Numeric(u64),
    Alpha(Box<str>),
}

/// The comparison a `sem_ver` rule asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SemVerOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `^`: same major version.
    Caret,
    /// `~`: same major and minor version.
    Tilde,
}

impl SemVerOp {
    pub(crate) fn parse(s: &str) -> Option<SemVerOp> {
        Some(match s {
            "=" => SemVerOp::Eq,
            "!=" => SemVerOp::Ne,
            "<" => SemVerOp::Lt,
            "<=" => SemVerOp::Le,
            ">" => SemVerOp::Gt,
            ">=" => SemVerOp::Ge,
            "^" => SemVerOp::Caret,
            "~" => SemVerOp::Tilde,
            _ => return None,
        })
    }

    pub(crate) fn holds(self, actual: &Version, target: &Version) -> bool {
        let ord = actual.cmp(target);
        match self {
            SemVerOp::Eq => ord == Ordering::Equal,
            SemVerOp::Ne => ord != Ordering::Equal,
            SemVerOp::Lt => ord == Ordering::Less,
            SemVerOp::Le => ord != Ordering::Greater,
            SemVerOp::Gt => ord == Ordering::Greater,
            SemVerOp::Ge => ord != Ordering::Less,
            SemVerOp::Caret => actual.major == target.major,
            SemVerOp::Tilde => actual.major == target.major && actual.minor == target.minor,
        }
    }
}

impl Version {
    /// Parses `v1.2.3-rc.1+build`, `1.2`, `V1`; `None` if it is not a version.
    pub(crate) fn parse(text: &str) -> Option<Version> {
        let rest = text
            .strip_prefix('v')
            .or_else(|| text.strip_prefix('V'))
            .unwrap_or(text);
        let (core, build) = match rest.split_once('+') {
            Some((core, build)) => (core, Some(build)),
            None => (rest, None),
        };
        if let Some(build) = build {
            if !build.split('.').all(is_build_ident) {
                return None;
            }
        }
        let (numbers, pre) = match core.split_once('-') {
            Some((numbers, pre)) => (numbers, Some(pre)),
            None => (core, None),
        };
        let mut parts = numbers.split('.');
        let major = parse_number(parts.next()?)?;
        let minor = parts.next().map(parse_number).unwrap_or(Some(0))?;
        let patch = parts.next().map(parse_number).unwrap_or(Some(0))?;
        if parts.next().is_some() {
            return None;
        }
        let full = numbers.split('.').count() == 3;
        if (pre.is_some() || build.is_some()) && !full {
            return None;
        }
        let pre = match pre {
            Some(pre) => pre.split('.').map(parse_pre_ident).collect::<Option<_>>()?,
            None => Box::default(),
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ident {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Ident::Numeric(a), Ident::Numeric(b)) => a.cmp(b),
            (Ident::Numeric(_), Ident::Alpha(_)) => Ordering::Less,
            (Ident::Alpha(_), Ident::Numeric(_)) => Ordering::Greater,
            (Ident::Alpha(a), Ident::Alpha(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Ident {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn parse_number(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn parse_pre_ident(s: &str) -> Option<Ident> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        parse_number(s).map(Ident::Numeric)
    } else {
        Some(Ident::Alpha(s.into()))
    }
}

fn is_build_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn short_forms_and_prefixes_mean_the_full_version() {
        assert_eq!(v("1"), v("1.0.0"));
        assert_eq!(v("1.2"), v("v1.2.0"));
        assert_eq!(v("V1.0.0"), v("1.0.0"));
    }

    #[test]
    fn rejects_what_go_semver_rejects() {
        for bad in [
            "",
            "v",
            "1.0.0.0",
            "01.0.0",
            "1.02.0",
            "1.0-rc",
            "1-rc",
            "1.0.0-",
            "1.0.0+",
            "not-a-version",
            "1.0.0-01",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prerelease_sorts_before_release_and_build_is_ignored() {
        assert!(v("2.0.0-alpha") < v("2.0.0"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-alpha.beta"));
        assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
        assert_eq!(v("1.0.0+other").cmp(&v("1.0.0+build")), Ordering::Equal);
    }

    #[test]
    fn caret_and_tilde_compare_major_and_minor() {
        assert!(SemVerOp::Tilde.holds(&v("3.0.1"), &v("3.0.0")));
        assert!(!SemVerOp::Tilde.holds(&v("3.1.0"), &v("3.0.0")));
        assert!(SemVerOp::Caret.holds(&v("3.1.0"), &v("3.0.0")));
        assert!(!SemVerOp::Caret.holds(&v("4.0.0"), &v("3.0.0")));
    }
}
