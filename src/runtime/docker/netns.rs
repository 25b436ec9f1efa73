//! Network holders: a container that does nothing but keep a deployment's network namespace,
//! started when the deployment's place is provisioned ahead of its create.
//!
//! Docker 20.10 joins a container to a user-defined network inside the runtime's prestart
//! hook: it moves the veth into the new namespace and starts the embedded DNS resolver there
//! (a re-run of the dockerd binary and eleven `iptables` calls), while the sandbox waits.
//! That is 150–210 ms of every start on this host, against 90 ms on the default bridge. A
//! container started in the namespace of a running holder (`container:<holder>`) skips all
//! of it, so a create with `autoStart` that takes a place provisioned ahead with a holder
//! starts its server that much sooner, on the same network with the same address rules.
//!
//! The holder is a static program of about 130 bytes built into mcp-runner (an endless
//! `pause()` loop; `ppoll` on arm64), imported once as a local image. It runs under runc as
//! `nobody` with no capability, a read-only root, 8 MiB of memory (Docker's minimum is 6)
//! and 4 tasks; it reads no input and runs no code of the deployment. Only the deployment's
//! first container uses it (restarts included). A pause stops the holder with the
//! container, or, when the container wrote nothing to its own file system, replaces the
//! container by one on the deployment's network and removes the holder (see
//! `holders.rs`): a paused deployment keeps nothing running.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, CreateImageOptions};
use futures_util::StreamExt;

use super::{Client, DockerError, docker_err, object_name};

/// The holder image (made locally, never pulled).
pub const HOLDER_IMAGE: &str = "mcp-runner-netns:1";
/// Label that marks a network holder (value `netns`).
pub const LABEL_ROLE: &str = "mcp-runner.role";
const ROLE_NETNS: &str = "netns";
/// Where the program sits in the image.
const PROGRAM: &str = "/netns-holder";

/// The Docker name of a deployment's network holder.
pub fn holder_name(deployment_id: &str) -> String {
    format!("{}-netns", object_name(deployment_id))
}

/// The network mode of a container that joins the holder `holder`'s namespace.
pub fn holder_network_mode(holder: &str) -> String {
    format!("container:{holder}")
}

/// The container (id or name) whose network namespace `network_mode` joins, if any.
pub fn joined_namespace(network_mode: &str) -> Option<&str> {
    network_mode.strip_prefix("container:")
}

/// The holder program for this machine: a statically linked ELF executable of one
/// loadable segment (file and memory image alike) whose code waits for signals for ever.
fn program() -> Option<Vec<u8>> {
    // The code, at file offset 120 (after the 64-byte ELF header and one 56-byte program
    // header), and the ELF machine number.
    let (machine, code): (u16, &[u8]) = if cfg!(target_arch = "x86_64") {
        (
            62,
            &[
                0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34 (pause)
                0x0f, 0x05, // syscall
                0xeb, 0xf7, // jmp back to the mov
            ],
        )
    } else if cfg!(target_arch = "aarch64") {
        (
            183,
            &[
                0x00, 0x00, 0x80, 0xd2, // mov x0, #0
                0x01, 0x00, 0x80, 0xd2, // mov x1, #0
                0x02, 0x00, 0x80, 0xd2, // mov x2, #0
                0x03, 0x00, 0x80, 0xd2, // mov x3, #0
                0x28, 0x09, 0x80, 0xd2, // mov x8, #73 (ppoll: no fds, no timeout)
                0x01, 0x00, 0x00, 0xd4, // svc #0
                0xfa, 0xff, 0xff, 0x17, // b back to the first mov
            ],
        )
    } else {
        return None;
    };
    const BASE: u64 = 0x40_0000;
    const CODE_AT: u64 = 64 + 56;
    let size = CODE_AT + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little-endian, version 1, System V ABI, an executable.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + CODE_AT).to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    // Program header: one PT_LOAD, readable and executable, the whole file at BASE.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    debug_assert_eq!(elf.len() as u64, size);
    Some(elf)
}

/// A tar archive (ustar) holding one executable file `name` with `content`.
fn tar_of(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let field = |header: &mut [u8; 512], at: usize, value: &[u8]| {
        header[at..at + value.len()].copy_from_slice(value);
    };
    field(&mut header, 0, name.as_bytes());
    field(&mut header, 100, b"0000555\0"); // mode
    field(&mut header, 108, b"0000000\0"); // uid
    field(&mut header, 116, b"0000000\0"); // gid
    field(
        &mut header,
        124,
        format!("{:011o}\0", content.len()).as_bytes(),
    );
    field(&mut header, 136, b"00000000000\0"); // mtime
    field(&mut header, 148, b"        "); // checksum, counted as spaces
    header[156] = b'0'; // a regular file
    field(&mut header, 257, b"ustar\0");
    field(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().next_multiple_of(512), 0);
    // Two zero blocks end the archive.
    tar.resize(tar.len() + 1024, 0);
    tar
}

impl Client {
    /// Makes sure the holder image exists (imported from the built-in program the first
    /// time); false on a machine the program is not built for.
    async fn ensure_holder_image(&self) -> Result<bool, DockerError> {
        let Some(program) = program() else {
            return Ok(false);
        };
        self.holder_image
            .get_or_try_init(|| async {
                let _permit = self.permit("inspect the image").await;
                if self.docker.inspect_image(HOLDER_IMAGE).await.is_ok() {
                    return Ok(true);
                }
                let (repo, tag) = HOLDER_IMAGE.split_once(':').unwrap_or((HOLDER_IMAGE, ""));
                let options = CreateImageOptions {
                    from_src: Some("-".to_owned()),
                    repo: Some(repo.to_owned()),
                    tag: Some(tag.to_owned()),
                    changes: vec![format!("ENTRYPOINT [\"{PROGRAM}\"]")],
                    ..Default::default()
                };
                let body = bollard::body_full(tar_of(&PROGRAM[1..], &program).into());
                self.count_request("import the network holder image");
                let mut progress = self.docker.create_image(Some(options), Some(body), None);
                while let Some(step) = progress.next().await {
                    step.map_err(docker_err("import the network holder image"))?;
                }
                tracing::info!(image = HOLDER_IMAGE, "network holder image imported");
                Ok(true)
            })
            .await
            .copied()
    }

    /// Creates and starts the network holder of `deployment_id` on `network_id`; returns
    /// its id, or `None` on a machine without the holder program. Whatever was made is
    /// removed when a step fails.
    pub async fn start_holder(
        &self,
        deployment_id: &str,
        network_id: &str,
    ) -> Result<Option<String>, DockerError> {
        if !self.ensure_holder_image().await? {
            return Ok(None);
        }
        let mut labels = self.labels(deployment_id);
        labels.insert(LABEL_ROLE.to_owned(), ROLE_NETNS.to_owned());
        let config = ContainerCreateBody {
            image: Some(HOLDER_IMAGE.to_owned()),
            user: Some("65534:65534".to_owned()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                // The holder runs no code of the deployment: the kernel's own isolation
                // suffices, and a sandbox of its own would cost a gVisor kernel per holder.
                runtime: Some("runc".to_owned()),
                network_mode: Some(network_id.to_owned()),
                // The deployment's container reads the holder's resolv.conf.
                dns: Some(self.settings.dns.clone()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
                readonly_rootfs: Some(true),
                memory: Some(8 << 20),
                memory_swap: Some(8 << 20),
                pids_limit: Some(4),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: Some(HashMap::new()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&holder_name(deployment_id))
            .build();
        let created = {
            let _permit = self.permit("create the network holder").await;
            self.docker
                .create_container(Some(options), config)
                .await
                .map_err(docker_err("create the network holder"))?
        };
        if let Err(e) = self.start_container(&created.id).await {
            let _ = self.remove_container(&created.id).await;
            return Err(e);
        }
        Ok(Some(created.id))
    }

    /// Removes the network holder of `deployment_id`; none is fine.
    pub async fn remove_holder(&self, deployment_id: &str) -> Result<(), DockerError> {
        self.remove_container(&holder_name(deployment_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_one_loadable_segment_entered_at_its_code() {
        let Some(elf) = program() else { return };
        assert_eq!(&elf[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, 0x40_0000 + 120);
        let filesz = u64::from_le_bytes(elf[64 + 32..64 + 40].try_into().unwrap());
        assert_eq!(filesz, elf.len() as u64);
    }

    #[test]
    fn the_tar_has_a_valid_header_and_whole_blocks() {
        let tar = tar_of("netns-holder", b"abc");
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..12], b"netns-holder");
        assert_eq!(&tar[512..515], b"abc");
        let stored = std::str::from_utf8(&tar[148..154]).unwrap();
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&tar[124..136], b"00000000003\0");
    }

    #[test]
    fn network_modes_name_the_holder() {
        assert_eq!(holder_name("dp_x"), "mcp-runner-dp_x-netns");
        let mode = holder_network_mode("abc");
        assert_eq!(joined_namespace(&mode), Some("abc"));
        assert_eq!(joined_namespace("mcp-runner-dp_x"), None);
    }
}
