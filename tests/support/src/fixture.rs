//! The fixture MCP server image: the `mcp-fixture` crate (`tests/fixture`) built as a static
//! binary and packed `FROM scratch` into a local image, once per process and tag (nothing is
//! pulled).
//!
//! Tests and benchmarks use different tags ([`TEST_IMAGE`], [`BENCH_IMAGE`]): both may build
//! at once. The binary is built in a target directory of its own (`<target>/tmp/fixture-build`),
//! so the cargo that runs the tests keeps its lock and the static flags do not invalidate the
//! main build; `--locked` keeps the build from touching `Cargo.lock`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// Tag of the tests' fixture image.
pub const TEST_IMAGE: &str = "mcp-runner-test-fixture:latest";
/// Tag of the benchmarks' fixture image.
pub const BENCH_IMAGE: &str = "mcp-runner-bench-fixture:latest";

/// Builds the fixture image as `tag` on first use in this process and returns the tag; later
/// calls with the same tag wait for that build and share its outcome.
pub async fn image(tag: &'static str) -> anyhow::Result<&'static str> {
    static BUILT: tokio::sync::Mutex<Option<HashMap<&'static str, Result<(), String>>>> =
        tokio::sync::Mutex::const_new(None);
    let mut built = BUILT.lock().await;
    let built = built.get_or_insert_with(HashMap::new);
    if !built.contains_key(tag) {
        let outcome = tokio::task::spawn_blocking(move || build(tag))
            .await
            .context("the fixture build task")?
            .map_err(|e| format!("{e:#}"));
        built.insert(tag, outcome);
    }
    built[tag].clone().map_err(anyhow::Error::msg)?;
    Ok(tag)
}

/// The tests' fixture image ([`TEST_IMAGE`]), built on first use; fails the test when it
/// cannot be built.
pub async fn test_image() -> &'static str {
    match image(TEST_IMAGE).await {
        Ok(tag) => tag,
        Err(e) => panic!("{e:#}"),
    }
}

/// The workspace root (this crate is `tests/support` in it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support lies in the workspace")
        .to_owned()
}

/// `<target>/tmp/fixture-build`, `<target>` being the directory cargo built the running test
/// or benchmark in (the first ancestor of the executable with cargo's `CACHEDIR.TAG`); under
/// the system's temporary directory when there is none.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map_or_else(std::env::temp_dir, |d| d.join("tmp"));
    target.join("fixture-build")
}

fn build(tag: &str) -> anyhow::Result<()> {
    crate::docker::check()?;
    let started = Instant::now();
    let target_dir = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let rustflags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace('-', "_")
    );
    let args = [
        "build",
        "--quiet",
        "--release",
        "--locked",
        "-p",
        "mcp-fixture",
        "--target",
        &triple,
    ];
    eprintln!("building the fixture image {tag} …");
    let status = Command::new(&cargo)
        .current_dir(workspace())
        .args(args)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(rustflags_var, "-C target-feature=+crt-static")
        .status()
        .with_context(|| format!("run {cargo}"))?;
    if !status.success() {
        bail!(
            "building the fixture server failed ({status}; `cargo {}` with CARGO_TARGET_DIR={}, its errors are above)",
            args.join(" "),
            target_dir.display()
        );
    }
    let binary = target_dir.join(&triple).join("release").join("mcp-fixture");

    let context = tempfile::tempdir().context("a build context")?;
    std::fs::copy(&binary, context.path().join("mcp-fixture"))
        .with_context(|| format!("copy {}", binary.display()))?;
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY mcp-fixture /mcp-fixture\nENTRYPOINT [\"/mcp-fixture\"]\nCMD [\"stdio\"]\n",
    )
    .context("write the Dockerfile")?;
    crate::docker::output_of(
        Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(context.path())
            .env("DOCKER_BUILDKIT", "0"),
    )
    .with_context(|| format!("docker build of the fixture image {tag}"))?;
    eprintln!(
        "fixture image {tag} ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
