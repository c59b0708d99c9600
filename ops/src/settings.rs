//! The optional TOML settings file (`--config`): every binary reads it into
//! its own `Args` type, with the same keys as its flags in snake_case; its
//! flags and environment variables win over the file, the file over the
//! defaults (that merge stays in each binary's `config`).

use std::path::{Path, PathBuf};

/// Why a settings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

/// Reads and parses the TOML file at `path`.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        listen: String,
    }

    #[test]
    fn reads_parses_and_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "listen = \"127.0.0.1:1\"\n").unwrap();
        let s: Sample = load(&good).unwrap();
        assert_eq!(s.listen, "127.0.0.1:1");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "lisen = 1\n").unwrap();
        let e = load::<Sample>(&bad).unwrap_err();
        assert!(matches!(e, SettingsError::Parse { .. }));
        assert!(e.to_string().contains("bad.toml"));

        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            load::<Sample>(&missing),
            Err(SettingsError::Read { .. })
        ));
    }
}
