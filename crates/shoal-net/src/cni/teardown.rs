//! Taking an attachment down: DEL through the plugins in reverse with the
//! cached ADD result, the best-effort rollback of a failed ADD, and
//! namespaces that are already gone passed as empty.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Attachment, Cni, CniError, CniResult, NetworkConfigList};

impl Cni {
    /// Runs DEL through the list in reverse, giving each plugin the cached
    /// ADD result, then forgets the cache file. Uses the cached
    /// configuration when there is one, else `list`. Succeeds when there is
    /// nothing left to delete.
    pub fn del(&self, list: &NetworkConfigList, attachment: &Attachment) -> Result<(), CniError> {
        list.validate()?;
        attachment.validate()?;
        let cached = self.read_cache(&list.name, &attachment.container_id)?;
        let (config, result) = match &cached {
            Some(c) => (&c.config, Some(&c.result)),
            None => (list, None),
        };
        self.del_plugins(config, attachment, result)?;
        self.remove_cache(&list.name, &attachment.container_id)
    }

    /// DEL of every plugin in reverse; stops at the first error so that the
    /// cache stays for the caller's retry.
    fn del_plugins(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<(), CniError> {
        let attachment = without_missing_netns(attachment);
        for index in (0..list.plugins.len()).rev() {
            self.exec_plugin("DEL", list, index, &attachment, prev)?;
        }
        Ok(())
    }

    /// DEL of the first `ran` plugins in reverse, going on past errors:
    /// after a failed ADD there is no cache to retry from.
    pub(super) fn roll_back(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        prev: Option<&CniResult>,
        ran: usize,
    ) {
        let attachment = without_missing_netns(attachment);
        for index in (0..ran.min(list.plugins.len())).rev() {
            if let Err(del_error) = self.exec_plugin("DEL", list, index, &attachment, prev) {
                tracing::warn!(%del_error, "rolling back a failed CNI ADD");
            }
        }
    }
}

/// A namespace that is gone (the task and its namespace were removed while
/// we were down) is passed as empty, which the spec allows for DEL; the
/// plugins then release what they hold outside of it.
fn without_missing_netns(attachment: &Attachment) -> Attachment {
    let mut attachment = attachment.clone();
    if !attachment.netns.as_os_str().is_empty() && !is_namespace(&attachment.netns) {
        attachment.netns = PathBuf::new();
    }
    attachment
}

/// Whether `path` is a network namespace (a file of the nsfs filesystem,
/// as a bind-mounted namespace is), not a missing path or the plain file
/// left when the namespace's mount is gone (after a reboot, or made in
/// another mount namespace).
pub fn is_namespace(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), fs::metadata("/proc/self/ns/net")) {
        (Ok(file), Ok(own)) => file.dev() == own.dev(),
        _ => false,
    }
}
