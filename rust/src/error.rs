use serde::Serialize;
use std::path::Path;

/// A fatal error, printed as one JSON object on stderr: {"kind", "message", "path"}.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub path: String,
}

impl Failure {
    pub fn new(kind: &str, message: impl Into<String>, path: &Path) -> Self {
        Failure {
            kind: kind.into(),
            message: message.into(),
            path: path.display().to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.kind, self.message, self.path)
    }
}

impl std::error::Error for Failure {}
