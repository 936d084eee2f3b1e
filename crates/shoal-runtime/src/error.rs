//! What went wrong in a runtime call ([`RuntimeError`], its message for
//! people) and what the caller can do about it ([`ErrorKind`], for code).

use std::fmt;

/// What a failed call means for its caller, the same for every driver, so
/// that the promise keeper and the API decide by kind and never by message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The image is not in the node's image store (it has to be pulled or
    /// imported first), or its registry has no such image.
    ImageMissing,
    /// The request cannot succeed as given (a config that cannot run, an
    /// image or archive that cannot be read): do not retry it unchanged.
    Invalid,
    /// The runtime could not be reached, did not answer in time or was
    /// busy: the same call may succeed later.
    Transient,
    /// The container (or its task) does not exist.
    NotFound,
    /// Something stands in the way: the id is taken, or the object is in a
    /// state the call cannot work in. Clear it, then retry.
    Conflict,
    /// Anything else: the runtime or the node is broken in a way a retry is
    /// not known to fix.
    Internal,
}

impl ErrorKind {
    /// The kind as logs and reports spell it (`image_missing`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ImageMissing => "image_missing",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Transient => "transient",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {0} is not on this node; pull it with `shoal image pull` or import it with `shoal image import`")]
    ImageNotFound(String),
    /// A registry could not give the image; `kind` says whether it may
    /// later (`Transient`), never will (`ImageMissing`), or needs other
    /// settings (`Invalid`: credentials, TLS).
    #[error("pulling {message}")]
    Registry { kind: ErrorKind, message: String },
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The container config cannot be run as given (bad id, no command, limits out of range).
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    /// The runtime itself failed; for containerd, `kind` comes from the gRPC
    /// status code.
    #[error("containerd: {message}")]
    Containerd { kind: ErrorKind, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// What the failure means for the caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::ImageNotFound(_) => ErrorKind::ImageMissing,
            RuntimeError::ContainerNotFound(_) => ErrorKind::NotFound,
            RuntimeError::ContainerExists(_) => ErrorKind::Conflict,
            RuntimeError::InvalidImage(_) | RuntimeError::InvalidConfig(_) => ErrorKind::Invalid,
            RuntimeError::Containerd { kind, .. } | RuntimeError::Registry { kind, .. } => *kind,
            // Files on this node (logs, archives being imported): only a
            // wait that ran out may go better next time.
            RuntimeError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::WouldBlock => ErrorKind::Transient,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// A failure of the runtime itself.
    pub fn containerd(kind: ErrorKind, message: impl Into<String>) -> Self {
        RuntimeError::Containerd {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_error_and_keep_its_message() {
        let cases = [
            (
                RuntimeError::ImageNotFound("x".into()),
                ErrorKind::ImageMissing,
            ),
            (
                RuntimeError::ContainerNotFound("x".into()),
                ErrorKind::NotFound,
            ),
            (
                RuntimeError::ContainerExists("x".into()),
                ErrorKind::Conflict,
            ),
            (RuntimeError::InvalidImage("x".into()), ErrorKind::Invalid),
            (RuntimeError::InvalidConfig("x".into()), ErrorKind::Invalid),
            (
                RuntimeError::containerd(ErrorKind::Transient, "down"),
                ErrorKind::Transient,
            ),
            (
                RuntimeError::Io {
                    context: "opening x".into(),
                    source: std::io::ErrorKind::NotFound.into(),
                },
                ErrorKind::Internal,
            ),
            (
                RuntimeError::Io {
                    context: "reading x".into(),
                    source: std::io::ErrorKind::TimedOut.into(),
                },
                ErrorKind::Transient,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
        assert_eq!(
            RuntimeError::containerd(ErrorKind::Internal, "boom").to_string(),
            "containerd: boom"
        );
        assert_eq!(ErrorKind::ImageMissing.to_string(), "image_missing");
    }
}
