//! The fixture MCP server image: the `mcp-fixture` crate built as a static binary and packed
//! `FROM scratch`, once per test run (nothing is pulled).

use std::path::PathBuf;
use std::process::Command;

use tokio::sync::OnceCell;

/// Tag of the fixture image.
pub const FIXTURE_IMAGE: &str = "mcp-runner-test-fixture:latest";

/// Builds the fixture image on first use and returns its tag.
pub async fn fixture_image() -> &'static str {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            tokio::task::spawn_blocking(build)
                .await
                .expect("fixture build task");
        })
        .await;
    FIXTURE_IMAGE
}

fn build() {
    super::docker::require_docker();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A target directory of its own: no lock contention with the cargo running the tests,
    // and the static flags do not invalidate the main build.
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixture-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let triple = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "mcp-fixture",
            "--target",
            triple,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .status()
        .expect("run cargo build for the fixture");
    assert!(status.success(), "building the fixture server failed");
    let binary = target_dir.join(triple).join("release").join("mcp-fixture");

    let context = tempfile::tempdir().expect("build context");
    std::fs::copy(&binary, context.path().join("mcp-fixture")).expect("copy fixture binary");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY mcp-fixture /mcp-fixture\nENTRYPOINT [\"/mcp-fixture\"]\nCMD [\"stdio\"]\n",
    )
    .expect("write Dockerfile");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", FIXTURE_IMAGE])
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build of the fixture image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
