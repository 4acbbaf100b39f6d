//! Finding the external programs tests and benchmarks use, and the skip policy when one is missing.
//!
//! Search order for each program: an explicit variable (`CASSETTE_S3S_FS`, `CASSETTE_MOTO_SERVER`,
//! `CASSETTE_AZURITE`, `CASSETTE_RCLONE`, `CASSETTE_AWS_CLI`), the repository's `.tools/` directory
//! (where `scripts/install.sh` installs them), then `PATH`.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// True when missing emulators must fail tests instead of skipping them (CI sets it).
pub fn emulators_required() -> bool {
    std::env::var("CASSETTE_REQUIRE_EMULATORS").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A program the harness can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `s3s-fs` 0.14.1, strict S3 server.
    S3sFs,
    /// `moto_server`, a second S3 implementation.
    Moto,
    /// `azurite-blob`, the Azure Blob emulator.
    Azurite,
    /// `rclone`, for benchmarks.
    Rclone,
    /// `aws` (awscli), for benchmarks.
    AwsCli,
}

impl Tool {
    /// The executable's name.
    pub fn binary(self) -> &'static str {
        match self {
            Tool::S3sFs => "s3s-fs",
            Tool::Moto => "moto_server",
            Tool::Azurite => "azurite-blob",
            Tool::Rclone => "rclone",
            Tool::AwsCli => "aws",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Tool::S3sFs => "CASSETTE_S3S_FS",
            Tool::Moto => "CASSETTE_MOTO_SERVER",
            Tool::Azurite => "CASSETTE_AZURITE",
            Tool::Rclone => "CASSETTE_RCLONE",
            Tool::AwsCli => "CASSETTE_AWS_CLI",
        }
    }

    /// How to install it, for messages.
    pub fn install_hint(self) -> &'static str {
        match self {
            Tool::S3sFs => {
                "scripts/install.sh storage installs it (cargo install s3s-fs@0.14.1 --features binary --locked)"
            }
            Tool::Moto => "scripts/install.sh storage installs it (pip install 'moto[server]' into .tools/venv)",
            Tool::Azurite => {
                "scripts/install.sh storage installs it (npm install --prefix .tools/azurite azurite@3.35.0)"
            }
            Tool::Rclone => "scripts/install.sh bench installs it (apt-get install rclone)",
            Tool::AwsCli => "scripts/install.sh bench installs it (pip install awscli into .tools/venv)",
        }
    }

    /// Where the program is, if anywhere.
    pub fn find(self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.variable()) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        let tools = workspace_root().join(".tools");
        let local = [
            tools.join("bin").join(self.binary()),
            tools.join("venv/bin").join(self.binary()),
            tools.join("azurite/node_modules/.bin").join(self.binary()),
        ];
        if let Some(p) = local.into_iter().find(|p| p.is_file()) {
            return Some(p);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join(self.binary())).find(|p| p.is_file())
    }
}

/// Outcome of looking for a required program.
#[derive(Debug)]
pub enum Found {
    /// Use this path.
    At(PathBuf),
    /// Missing, and skipping is allowed: the caller returns early (a message was printed).
    Skip,
}

/// Finds `tool`; when it is missing, prints a visible skip message, or panics with an
/// installation hint when `CASSETTE_REQUIRE_EMULATORS=1`.
pub fn require(tool: Tool, test: &str) -> Found {
    match tool.find() {
        Some(p) => Found::At(p),
        None if emulators_required() => {
            panic!("{test}: {} not found and CASSETTE_REQUIRE_EMULATORS=1: {}", tool.binary(), tool.install_hint())
        }
        None => {
            eprintln!(
                "SKIPPED {test}: {} not found ({}); set CASSETTE_REQUIRE_EMULATORS=1 to fail instead",
                tool.binary(),
                tool.install_hint()
            );
            Found::Skip
        }
    }
}

/// A free TCP port on 127.0.0.1 (the listener is closed again; a server started right after will
/// almost always get it, and callers retry on a clash).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Path to a binary of this workspace, built first (once per process) so that it is never stale.
///
/// `env!("CARGO_BIN_EXE_…")` only covers binaries of the package under test, and `cargo test`
/// does not build other packages' binaries, so this runs `cargo build` for it. Cargo is
/// incremental: when nothing changed this takes a fraction of a second. The profile follows the
/// running executable (`target/release/…` builds with `--release`).
pub fn workspace_binary(package: &str, binary: &str) -> PathBuf {
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<std::collections::BTreeMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = built.get(binary) {
        return p.clone();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // scripts/sandbox.sh built every binary in one cargo invocation (one feature set); building
    // them again one by one would compile the dependencies a second time.
    if std::env::var("CASSETTE_PREBUILT_BINARIES").is_ok_and(|v| v == "1")
        && let Some(dir) = exe.parent()
        && dir.join(binary).is_file()
    {
        let p = dir.join(binary);
        built.insert(binary.to_owned(), p.clone());
        return p;
    }
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let profile_dir = exe
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "debug" || n == "release"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "--quiet", "-p", package, "--bin", binary]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cargo} to build {binary}: {e}"));
    assert!(status.success(), "cargo build -p {package} --bin {binary} failed");
    let path = profile_dir.join(binary);
    built.insert(binary.to_owned(), path.clone());
    path
}
