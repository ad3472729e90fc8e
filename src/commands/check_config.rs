//! `xdr-relay check-config`: validate everything, print every problem, exit 0 or 2.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path of relay.toml; tenant files are read from `tenants.d/` beside it unless
    /// `tenants_dir` says otherwise.
    #[arg(long, short, default_value = "/etc/xdr-relay/relay.toml")]
    pub config: PathBuf,
}

/// Exit status for a configuration that does not validate.
pub const EXIT_BAD_CONFIG: u8 = 2;

/// Loads and validates the configuration the way `run` does.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = super::process_env();
    let opts = relay_config::LoadOptions::new(&args.config, &env);
    match relay_config::load(&opts) {
        Ok(config) => {
            let tenants = config.tenants.len();
            let enabled = config.enabled_tenants().count();
            println!(
                "{}: ok ({tenants} tenant(s), {enabled} enabled, {} sink(s))",
                args.config.display(),
                config.sinks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for problem in errors.problems() {
                eprintln!("{problem}");
            }
            eprintln!(
                "{}: {} problem(s); nothing was started",
                args.config.display(),
                errors.problems().len()
            );
            Ok(ExitCode::from(EXIT_BAD_CONFIG))
        }
    }
}
