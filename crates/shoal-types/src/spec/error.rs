//! What is wrong with a spec: errors that name the field path and the fix.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing wrong with a spec, at a field path such as `services[0].replicas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a spec; a spec with any error changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            if error.path.is_empty() || error.path == "." {
                write!(f, "{}", error.message)?;
            } else {
                write!(f, "{}: {}", error.path, error.message)?;
            }
        }
        Ok(())
    }
}
