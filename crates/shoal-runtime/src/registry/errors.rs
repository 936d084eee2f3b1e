//! What registry failures mean, worded for people and bounded, and the
//! error a blob stream carries inside an `io::Error`.

use super::*;

/// The error a blob stream carries inside an `io::Error` (with its kind),
/// or the `io::Error` itself with `context`.
pub(crate) fn from_io(source: std::io::Error, context: impl FnOnce() -> String) -> RuntimeError {
    if !source
        .get_ref()
        .is_some_and(|inner| inner.is::<RuntimeError>())
    {
        return RuntimeError::Io {
            context: context(),
            source,
        };
    }
    match source
        .into_inner()
        .map(|inner| inner.downcast::<RuntimeError>())
    {
        Some(Ok(inner)) => *inner,
        _ => RuntimeError::Registry {
            kind: ErrorKind::Internal,
            message: format!("{}: an error of a kind just checked vanished", context()),
        },
    }
}

/// What a registry failure means: not there (the reference is wrong), not
/// allowed (the credentials are), or not now (the network, the registry's
/// own trouble).
pub(super) fn registry_error(
    reference: &ImageRef,
    doing: &str,
    e: OciDistributionError,
) -> RuntimeError {
    use OciDistributionError as E;
    let (kind, what) = match &e {
        E::ImageManifestNotFoundError(_) => (
            ErrorKind::ImageMissing,
            "the registry has no such image".to_string(),
        ),
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => (
            ErrorKind::Invalid,
            "the registry refused the credentials (add them with `shoal registry add`)".to_string(),
        ),
        E::ServerError { code, message, .. } => match *code {
            404 => (
                ErrorKind::ImageMissing,
                "the registry has no such image".to_string(),
            ),
            401 | 403 => (
                ErrorKind::Invalid,
                format!("the registry refused access ({code}): {message}"),
            ),
            429 | 500..=599 => (
                ErrorKind::Transient,
                format!("the registry answered {code}: {message}"),
            ),
            _ => (
                ErrorKind::Invalid,
                format!("the registry answered {code}: {message}"),
            ),
        },
        E::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let text = envelope
                .errors
                .iter()
                .map(|x| x.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let has = |wanted: &[C]| envelope.errors.iter().any(|x| wanted.contains(&x.code));
            if has(&[
                C::ManifestUnknown,
                C::NameUnknown,
                C::BlobUnknown,
                C::ManifestBlobUnknown,
                C::NotFound,
            ]) {
                (
                    ErrorKind::ImageMissing,
                    format!("the registry has no such image: {text}"),
                )
            } else if has(&[C::Toomanyrequests]) {
                (
                    ErrorKind::Transient,
                    format!("the registry asks to slow down: {text}"),
                )
            } else if has(&[C::Unauthorized, C::Denied]) {
                (
                    ErrorKind::Invalid,
                    format!("the registry refused access: {text}"),
                )
            } else {
                // A name, tag, manifest or digest it calls invalid, or
                // something it does not support: asking again changes nothing.
                (ErrorKind::Invalid, format!("the registry refused: {text}"))
            }
        }
        E::RequestError(inner) => (
            ErrorKind::Transient,
            format!("cannot reach the registry: {}", error_chain(inner)),
        ),
        E::IoError(inner) => (
            ErrorKind::Transient,
            format!("reading from the registry: {inner}"),
        ),
        other => (ErrorKind::Invalid, other.to_string()),
    };
    RuntimeError::Registry {
        kind,
        message: bounded(format!("{reference}: {doing}: {what}")),
    }
}

/// What a registry says reaches task statuses (in the replicated log) and
/// API answers: at most [`MESSAGE_BYTES_MAX`] of it.
pub(super) fn bounded(mut message: String) -> String {
    if message.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// An error with its causes, which reqwest keeps apart (the TLS or
/// connection reason is only in the source).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        if depth >= 8 {
            break;
        }
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
        depth += 1;
    }
    out
}
