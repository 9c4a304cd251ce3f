//! Configuration errors: every problem names the key path and, when the configuration came
//! from TOML text, the line and column of the offending key or value.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path such as `sip.udp` or `tenants[0].users[2].password`; `None` when the
    /// problem cannot be tied to a key (for example a TOML syntax error between keys).
    pub key: Option<String>,
    /// 1-based line in the TOML text, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) in the TOML text, when known.
    pub column: Option<usize>,
    /// What is wrong, in plain words.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: Some(key.into()),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: ")?,
            (Some(line), None) => write!(f, "line {line}: ")?,
            _ => {}
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, does not match the schema, or fails semantic validation.
    /// All semantic problems are reported at once; syntax and schema errors stop at the first.
    #[error("{}", DisplayProblems { file: file.as_ref(), problems })]
    Invalid {
        /// The file the text came from, when it came from a file.
        file: Option<PathBuf>,
        /// At least one problem.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found (empty for [`ConfigError::Read`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }

    pub(crate) fn with_file(self, path: PathBuf) -> Self {
        match self {
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                file: Some(path),
                problems,
            },
            other => other,
        }
    }
}

struct DisplayProblems<'a> {
    file: Option<&'a PathBuf>,
    problems: &'a [Problem],
}

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if let Some(file) = self.file {
                write!(f, "{}: ", file.display())?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
