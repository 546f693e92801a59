//! Checks that a push webhook comes from the forge that knows the shared secret. A verified
//! webhook only means "look now": the commit to deploy is still read from the repository, so a
//! replayed or reordered webhook cannot deploy anything that is not at the reference's head.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// GitHub: `header` is the `X-Hub-Signature-256` value, `sha256=<hex HMAC-SHA256(secret, body)>`.
/// The comparison takes the same time whatever the first wrong byte. An empty secret never
/// verifies.
///
/// ```
/// use gauntlet_source::webhook::verify_github;
///
/// let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
/// assert!(verify_github(b"It's a Secret to Everybody", b"Hello, World!", header));
/// ```
pub fn verify_github(secret: &[u8], body: &[u8], header: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Some(hex_signature) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(signature) = hex::decode(hex_signature) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// GitLab: `header` is the `X-Gitlab-Token` value, which must equal the secret. Both are hashed
/// first so that the comparison leaks neither content nor length. An empty secret never
/// verifies.
pub fn verify_gitlab(secret: &[u8], header: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let expected = Sha256::digest(secret);
    let given = Sha256::digest(header.as_bytes());
    expected.ct_eq(&given).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // From GitHub's "Validating webhook deliveries" documentation.
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documentation_vector_verifies() {
        assert!(verify_github(SECRET, BODY, SIGNATURE));
        assert!(verify_github(
            SECRET,
            BODY,
            &SIGNATURE.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    #[test]
    fn github_rejects_a_wrong_signature_body_or_secret() {
        let flipped = SIGNATURE.replace("757107", "757108");
        assert!(!verify_github(SECRET, BODY, &flipped));
        assert!(!verify_github(SECRET, b"Hello, World?", SIGNATURE));
        assert!(!verify_github(b"another secret", BODY, SIGNATURE));
    }

    #[test]
    fn github_rejects_malformed_headers_and_empty_secrets() {
        assert!(!verify_github(SECRET, BODY, ""));
        assert!(!verify_github(
            SECRET,
            BODY,
            &SIGNATURE.replace("sha256=", "sha1=")
        ));
        assert!(!verify_github(SECRET, BODY, "sha256=zz"));
        assert!(!verify_github(
            SECRET,
            BODY,
            &SIGNATURE[..SIGNATURE.len() - 2]
        ));
        assert!(!verify_github(b"", BODY, SIGNATURE));
    }

    #[test]
    fn gitlab_accepts_only_the_exact_token() {
        assert!(verify_gitlab(b"t0ken", "t0ken"));
        assert!(!verify_gitlab(b"t0ken", "t0ken "));
        assert!(!verify_gitlab(b"t0ken", "t0ke"));
        assert!(!verify_gitlab(b"t0ken", ""));
        assert!(!verify_gitlab(b"", ""));
    }
}
