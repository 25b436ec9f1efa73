//! Host users: one system account per deployment (no home, nologin shell), made and removed
//! with the shadow utilities so that the host's own tools see them.
//!
//! The account's comment field (GECOS) is `mcp-runner/<instance>/<deployment id>`: that is how
//! reconciliation finds accounts whose deployment row is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::Mutex;

use super::DockerError;
use crate::runtime::RuntimeError;

/// A host account made by this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    /// Login name.
    pub name: String,
    /// UID.
    pub uid: u32,
    /// Deployment it belongs to.
    pub deployment_id: String,
}

/// Makes and removes host accounts.
#[derive(Debug, Clone)]
pub struct HostUsers {
    etc: PathBuf,
    instance_id: String,
}

/// The shadow utilities lock `/etc/passwd` themselves and fail when it is taken; this lock
/// keeps the process (every instance in it) from racing itself into those failures.
static SHADOW_LOCK: Mutex<()> = Mutex::const_new(());

/// Exit code of useradd/userdel/groupdel: the user or group does not exist.
const NO_SUCH_ENTRY: i32 = 6;

impl HostUsers {
    /// Accounts of instance `instance_id`, in the host's `/etc`.
    pub fn new(instance_id: &str) -> HostUsers {
        HostUsers {
            etc: PathBuf::from("/etc"),
            instance_id: instance_id.to_owned(),
        }
    }

    fn comment(&self, deployment_id: &str) -> String {
        format!("mcp-runner/{}/{deployment_id}", self.instance_id)
    }

    /// Creates the group `name` with GID `id` and the user `name` with UID `id` in it.
    pub async fn create(
        &self,
        name: &str,
        id: u32,
        deployment_id: &str,
    ) -> Result<(), DockerError> {
        let _guard = SHADOW_LOCK.lock().await;
        let id_s = id.to_string();
        run(
            "create the host group",
            "groupadd",
            &["--system", "--gid", &id_s, name],
        )
        .await?;
        let shell = nologin_shell();
        let comment = self.comment(deployment_id);
        let made = run(
            "create the host user",
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--no-log-init",
                "--shell",
                shell,
                "--uid",
                &id_s,
                "--gid",
                &id_s,
                "--comment",
                &comment,
                name,
            ],
        )
        .await;
        if let Err(e) = made {
            // Leave nothing half-made behind.
            let _ = run_allowing("remove the host group", "groupdel", &[name], NO_SUCH_ENTRY).await;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes the user `name` and its group; either already gone is fine.
    pub async fn delete(&self, name: &str) -> Result<(), DockerError> {
        let _guard = SHADOW_LOCK.lock().await;
        run_allowing("delete the host user", "userdel", &[name], NO_SUCH_ENTRY).await?;
        // userdel removes the user's private group on most systems; make sure.
        run_allowing("delete the host group", "groupdel", &[name], NO_SUCH_ENTRY).await?;
        Ok(())
    }

    /// Accounts of this instance, read from the passwd file.
    pub async fn list(&self) -> Result<Vec<HostUser>, DockerError> {
        let passwd = read(&self.etc.join("passwd")).await?;
        let prefix = format!("mcp-runner/{}/", self.instance_id);
        Ok(parse_entries(&passwd)
            .filter_map(|e| {
                let deployment_id = e.comment.strip_prefix(&prefix)?;
                Some(HostUser {
                    name: e.name.to_owned(),
                    uid: e.id,
                    deployment_id: deployment_id.to_owned(),
                })
            })
            .collect())
    }

    /// Every UID and GID in use on the host; a new deployment's id must be in neither.
    pub async fn used_ids(&self) -> Result<HashSet<u32>, DockerError> {
        let passwd = read(&self.etc.join("passwd")).await?;
        let group = read(&self.etc.join("group")).await?;
        let mut ids: HashSet<u32> = parse_entries(&passwd).map(|e| e.id).collect();
        ids.extend(parse_entries(&group).map(|e| e.id));
        Ok(ids)
    }

    /// Whether the user `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, DockerError> {
        let passwd = read(&self.etc.join("passwd")).await?;
        Ok(parse_entries(&passwd).any(|e| e.name == name))
    }
}

/// One line of passwd or group: name, id (UID or GID) and, for passwd, the comment.
struct Entry<'a> {
    name: &'a str,
    id: u32,
    comment: &'a str,
}

fn parse_entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id = fields.next()?.parse().ok()?;
        let _gid_or_members = fields.next();
        let comment = fields.next().unwrap_or("");
        Some(Entry { name, id, comment })
    })
}

async fn read(path: &Path) -> Result<String, DockerError> {
    tokio::fs::read_to_string(path).await.map_err(|e| {
        DockerError::Other(RuntimeError::Host {
            op: "read the account database",
            reason: format!("{}: {e}", path.display()),
        })
    })
}

fn nologin_shell() -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("/bin/false")
}

async fn run(op: &'static str, program: &str, args: &[&str]) -> Result<(), DockerError> {
    run_allowing(op, program, args, 0).await
}

/// Runs a shadow utility; exit code 0 or `also_ok` is success. A busy lock file (another
/// program editing /etc/passwd) is retried for a few seconds.
async fn run_allowing(
    op: &'static str,
    program: &str,
    args: &[&str],
    also_ok: i32,
) -> Result<(), DockerError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let output = Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                DockerError::Other(RuntimeError::Host {
                    op,
                    reason: format!("{program}: {e}"),
                })
            })?;
        let code = output.status.code().unwrap_or(-1);
        if code == 0 || code == also_ok {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let locked = stderr.contains("lock");
        if locked && attempt < 8 {
            tokio::time::sleep(delay).await;
            delay *= 2;
            continue;
        }
        return Err(DockerError::Other(RuntimeError::Host {
            op,
            reason: format!("{program} exited with {code}: {stderr}"),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group_lines() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
                    mcp-dp_abc:x:3000001:3000001:mcp-runner/default/dp_abc:/:/usr/sbin/nologin\n\
                    broken line\n\
                    users:x:100:\n";
        let entries: Vec<_> = parse_entries(text).collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].name, "mcp-dp_abc");
        assert_eq!(entries[1].id, 3000001);
        assert_eq!(entries[1].comment, "mcp-runner/default/dp_abc");
        assert_eq!(entries[2].id, 100);
    }
}
