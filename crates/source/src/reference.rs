//! Which remote ref a configured reference means, and what commit it points to, decided from
//! `git ls-remote` output. Branches win over tags of the same name (the opposite of git's own
//! rule for `git fetch <name>`, but what people mean by "track main"); an annotated tag is peeled
//! to its commit; a full sha needs no lookup at all.

/// A configured reference, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    /// A full commit id (40 hex digits for SHA-1 repositories, 64 for SHA-256), lowercased.
    Commit(String),
    /// A branch or tag name, `HEAD`, or a full ref name such as `refs/heads/main`.
    Name(String),
}

impl Reference {
    pub fn parse(reference: &str) -> Reference {
        let trimmed = reference.trim();
        if is_full_sha(trimmed) {
            Reference::Commit(trimmed.to_ascii_lowercase())
        } else {
            Reference::Name(trimmed.to_string())
        }
    }
}

pub(crate) fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The remote ref names a name may stand for, in order of preference. A peeled entry (`^{}`)
/// precedes its tag so that an annotated tag resolves to the commit, not the tag object.
pub(crate) fn candidates(name: &str) -> Vec<String> {
    if name == "HEAD" {
        vec!["HEAD".to_string()]
    } else if name.starts_with("refs/") {
        vec![format!("{name}^{{}}"), name.to_string()]
    } else {
        vec![
            format!("refs/heads/{name}"),
            format!("refs/tags/{name}^{{}}"),
            format!("refs/tags/{name}"),
        ]
    }
}

/// Picks, from `git ls-remote` output (`<sha>\t<ref>` lines), the first candidate present.
/// Returns the ref name to fetch (without `^{}`) and the commit it resolves to.
pub(crate) fn resolve(ls_remote: &str, candidates: &[String]) -> Option<(String, String)> {
    let entries: Vec<(&str, &str)> = ls_remote
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(sha, _)| is_full_sha(sha))
        .collect();
    candidates.iter().find_map(|candidate| {
        entries
            .iter()
            .find(|(_, name)| name == candidate)
            .map(|(sha, name)| {
                (
                    name.trim_end_matches("^{}").to_string(),
                    sha.to_ascii_lowercase(),
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LS_REMOTE: &str = "\
f9e95c32d5c4bcaa9bc716fd2067eefa2f52878a\trefs/heads/main
1111111111111111111111111111111111111111\trefs/heads/release
e3f3dcb31df06ff91452919425fe9ac1e058df40\trefs/tags/v1
91fa46bc65ef6055a2775426878c4158640d72ff\trefs/tags/v1^{}
2222222222222222222222222222222222222222\trefs/tags/release
3333333333333333333333333333333333333333\trefs/tags/light
";

    fn pick(name: &str) -> Option<(String, String)> {
        resolve(LS_REMOTE, &candidates(name))
    }

    #[test]
    fn a_branch_resolves_to_its_tip() {
        assert_eq!(
            pick("main"),
            Some((
                "refs/heads/main".into(),
                "f9e95c32d5c4bcaa9bc716fd2067eefa2f52878a".into()
            ))
        );
    }

    #[test]
    fn an_annotated_tag_resolves_to_the_commit_not_the_tag_object() {
        assert_eq!(
            pick("v1"),
            Some((
                "refs/tags/v1".into(),
                "91fa46bc65ef6055a2775426878c4158640d72ff".into()
            ))
        );
        assert_eq!(
            pick("refs/tags/v1").map(|r| r.1),
            Some("91fa46bc65ef6055a2775426878c4158640d72ff".into())
        );
    }

    #[test]
    fn a_lightweight_tag_resolves_to_its_commit() {
        assert_eq!(
            pick("light").map(|r| r.1),
            Some("3333333333333333333333333333333333333333".into())
        );
    }

    #[test]
    fn a_branch_wins_over_a_tag_of_the_same_name() {
        assert_eq!(
            pick("release").map(|r| r.0),
            Some("refs/heads/release".into())
        );
    }

    #[test]
    fn a_name_only_matches_whole_ref_names() {
        assert_eq!(pick("ain"), None);
        assert_eq!(pick("heads/main"), None);
    }

    #[test]
    fn full_shas_are_commits_and_short_ones_are_names() {
        let sha = "F9E95C32D5C4BCAA9BC716FD2067EEFA2F52878A";
        assert_eq!(
            Reference::parse(sha),
            Reference::Commit(sha.to_ascii_lowercase())
        );
        assert_eq!(
            Reference::parse("f9e95c3"),
            Reference::Name("f9e95c3".into())
        );
        assert_eq!(
            Reference::parse(&"a".repeat(64)),
            Reference::Commit("a".repeat(64))
        );
    }
}
