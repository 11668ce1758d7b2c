//! Secret values by name: files in a directory (one per secret, re-read when they change) and
//! environment variables. A value is a [`Secret`], which never prints.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_core::SecretName;
use parking_lot::Mutex;

/// The prefix of the environment variable that holds a secret: `BATON_SECRET_<NAME>`, the
/// name upper-cased with `.` and `-` as `_`.
pub const ENV_PREFIX: &str = "BATON_SECRET_";

/// A secret's value. It prints as `***` (`Debug` and `Display`) and does not serialize, so
/// it cannot reach a log line, an error or an answer by accident; [`Secret::expose`] is the
/// one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Arc<str>,
    /// Changes whenever the value read for the name changes.
    version: u64,
}

impl Secret {
    /// The value, for the one place it is needed: a header or a TLS configuration.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Tells values of one name apart: a rotated secret has a new version.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a secret could not be had. Messages name the secret, never a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a file nor a variable holds it.
    #[error("secret {name} is not set: no file {file} and no variable {variable}")]
    Missing {
        /// The secret.
        name: SecretName,
        /// Where the file was looked for, or `(no --secrets-dir)`.
        file: String,
        /// The variable looked at.
        variable: String,
    },
    /// Its file exists but could not be read.
    #[error("secret {name}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The secret.
        name: SecretName,
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its value is not UTF-8 text, or empty.
    #[error("secret {name} is {reason}")]
    Invalid {
        /// The secret.
        name: SecretName,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Where secrets come from. Cheap to clone; clones share the cache.
///
/// A name is looked up as the file `<dir>/<name>` first, then as the environment variable
/// `BATON_SECRET_<NAME>`. A file's value is its content without trailing line breaks. Files
/// are read on every lookup (a few microseconds), so the next call after a rotation uses the
/// new value however the file was replaced; no modification time can miss a quick rewrite.
#[derive(Clone, Default)]
pub struct Secrets {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    dir: Option<PathBuf>,
    /// The last value read per name, which keeps its version while it does not change.
    last: Mutex<HashMap<SecretName, Secret>>,
    versions: AtomicU64,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl Secrets {
    /// Secrets from files in `dir` (when given) and from environment variables.
    pub fn new(dir: Option<&Path>) -> Self {
        Self { inner: Arc::new(Inner { dir: dir.map(Path::to_owned), ..Inner::default() }) }
    }

    /// The directory of secret files, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The current value of `name`.
    pub fn get(&self, name: &SecretName) -> Result<Secret, Error> {
        if let Some(dir) = &self.inner.dir {
            let path = dir.join(name.as_str());
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes)
                        .map_err(|_| Error::Invalid { name: name.clone(), reason: "not UTF-8" })?;
                    return self.versioned(name, text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Unreadable { name: name.clone(), path, source }),
            }
        }
        let variable = variable(name);
        match std::env::var(&variable) {
            Ok(value) => self.versioned(name, value),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Invalid { name: name.clone(), reason: "not UTF-8" }),
            Err(std::env::VarError::NotPresent) => Err(Error::Missing {
                name: name.clone(),
                file: self.inner.dir.as_ref().map_or_else(
                    || "(no --secrets-dir)".to_owned(),
                    |dir| dir.join(name.as_str()).display().to_string(),
                ),
                variable,
            }),
        }
    }

    /// Wraps a value read now; a value equal to the last one read keeps its version.
    fn versioned(&self, name: &SecretName, mut text: String) -> Result<Secret, Error> {
        let kept = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(kept);
        if text.is_empty() {
            return Err(Error::Invalid { name: name.clone(), reason: "empty" });
        }
        let mut last = self.inner.last.lock();
        if let Some(secret) = last.get(name)
            && *secret.value == *text
        {
            return Ok(secret.clone());
        }
        let version = self.inner.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let secret = Secret { value: text.into(), version };
        last.insert(name.clone(), secret.clone());
        Ok(secret)
    }
}

/// `BATON_SECRET_<NAME>`: upper case, `.` and `-` as `_`.
pub fn variable(name: &SecretName) -> String {
    let mut variable = String::from(ENV_PREFIX);
    variable.extend(name.as_str().chars().map(|c| match c {
        '.' | '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    variable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> SecretName {
        SecretName::new(text).unwrap()
    }

    #[test]
    fn files_are_read_again_when_they_change() {
        let dir = std::env::temp_dir().join(format!("baton-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = Secrets::new(Some(&dir));
        std::fs::write(dir.join("pay-token"), "first\n").unwrap();
        let first = secrets.get(&name("pay-token")).unwrap();
        assert_eq!(first.expose(), "first");
        assert_eq!(secrets.get(&name("pay-token")).unwrap().version(), first.version());
        // A rotation by rename, as tools that write secrets atomically do.
        std::fs::write(dir.join("pay-token.new"), "second-longer").unwrap();
        std::fs::rename(dir.join("pay-token.new"), dir.join("pay-token")).unwrap();
        let second = secrets.get(&name("pay-token")).unwrap();
        assert_eq!(second.expose(), "second-longer");
        assert_ne!(second.version(), first.version());
        // Rewritten in place at once, the same length: still seen.
        std::fs::write(dir.join("pay-token"), "third-longers").unwrap();
        assert_eq!(secrets.get(&name("pay-token")).unwrap().expose(), "third-longers");
        std::fs::write(dir.join("empty"), "\n").unwrap();
        assert_eq!(secrets.get(&name("empty")).unwrap_err().to_string(), "secret empty is empty");
        let missing = secrets.get(&name("nowhere")).unwrap_err().to_string();
        assert!(missing.contains("no file") && missing.contains("BATON_SECRET_NOWHERE"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret { value: "hunter2".into(), version: 1 };
        assert_eq!(format!("{secret} {secret:?} {:?}", Some(&secret)), "*** Secret(***) Some(Secret(***))");
        assert_eq!(variable(&name("pay-token.v2")), "BATON_SECRET_PAY_TOKEN_V2");
    }
}
