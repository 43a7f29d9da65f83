//! The `jupyter-audit` binary: parses the command line and runs a subcommand.
//!
//! The edge of the program: it turns the clap structs of [`cli`] into the library's plain
//! options and configs (nothing in the library imports `cli`).

mod cli;

use std::io::IsTerminal;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use cli::{
    Cli, CollectorArgs, Command, HubIdentityPolicy, KernelArgs, PostgresCommand, PostgresInitArgs,
    VerifyArgs, VerifyExportArgs,
};
use jupyter_audit::config::{self, ConfigFile, LimitsSection};
use jupyter_audit::proxy::{self, ProxyConfig};
use jupyter_audit::{kernelspec, launcher, memory, review, store};

fn main() {
    init_tracing();
    let cli = Cli::parse();
    memory::keep_memory_bounded(match cli.command {
        Command::Kernel(_) => memory::Profile::Relay,
        _ => memory::Profile::Service,
    });
    if let Err(error) = run(cli) {
        eprintln!("jupyter-audit: {}", describe(&error));
        std::process::exit(1);
    }
}

/// One line: the error and those of its causes that add something new.
fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Kernel(args) => run_kernel(args),
        Command::Install(args) => {
            check_proxy_flags(&args.proxy_flag)?;
            let dir = kernelspec::install(&args.into())?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Verify(args) => run_verify(&args),
        Command::Collector(args) => run_collector(*args),
        Command::ExportKey(args) => {
            println!("{}", store::export_public_key(&args.store)?);
            Ok(())
        }
        Command::Log(args) => review::exit(review::log::run(&args.into())),
        Command::Sessions(args) => review::exit(review::sessions::run(&args.into())),
        Command::Replay(args) => review::exit(review::replay::run(&args.into())),
        Command::Export(args) => run_export(args),
        Command::VerifyExport(args) => run_verify_export(&args),
        Command::Serve(args) => run_serve(args),
        Command::Status(args) => {
            let status = jupyter_audit::postgres::status::read(&(&args).into())?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            Ok(())
        }
        Command::Postgres(PostgresCommand::Init(args)) => run_postgres_init(args),
        Command::Completions(args) => {
            // Generated from the same clap definitions that parse the command line, so
            // the scripts cannot fall behind the flags.
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "jupyter-audit",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpages(args) => {
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            clap_mangen::generate_to(Cli::command(), &args.out)
                .with_context(|| format!("cannot write the man pages into {}", args.out.display()))
        }
    }
}

/// Refuses `install --proxy-flag` values the proxy would refuse at every kernel start:
/// they are parsed as `jupyter-audit kernel` would parse them.
fn check_proxy_flags(flags: &[String]) -> anyhow::Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    for flag in flags {
        kernelspec::check_extra_flag(flag)?;
    }
    let argv = ["jupyter-audit", "kernel"]
        .into_iter()
        .chain(flags.iter().map(String::as_str))
        .chain(["-f", "{connection_file}", "--", "kernel"]);
    if let Err(error) = Cli::try_parse_from(argv) {
        anyhow::bail!(
            "--proxy-flag {}: not flags that `jupyter-audit kernel` takes:\n{}",
            flags.join(" "),
            error.render()
        );
    }
    Ok(())
}

/// `postgres init`: prints the script (`--print`), or runs it and says what it created.
fn run_postgres_init(args: PostgresInitArgs) -> anyhow::Result<()> {
    use jupyter_audit::postgres::schema;
    let print = args.print;
    let options = schema::InitOptions::from(args);
    if print {
        print!("{}", schema::init_script(&options)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(schema::init(&options))?;
    print!("{report}");
    Ok(())
}

/// The collector's Hub settings: its flags, else the config file's [hub].
fn hub_options(
    args: &CollectorArgs,
    file: &jupyter_audit::config::HubSection,
) -> anyhow::Result<Option<jupyter_audit::collector::hub::HubOptions>> {
    use jupyter_audit::collector::hub::{HubOptions, HubPolicy};
    let Some(api_url) = args.hub_api_url.clone().or(file.api_url.clone()) else {
        let hub_setting_given = args.hub_identity.is_some()
            || args.hub_ca_file.is_some()
            || args.hub_client_cert.is_some()
            || args.hub_cache_max_age_secs.is_some()
            || *file != jupyter_audit::config::HubSection::default();
        if hub_setting_given {
            // A policy that silently does nothing would read as kernels being attested.
            anyhow::bail!(
                "Hub settings are given but no Hub API URL (--hub-api-url or [hub] api_url)"
            );
        }
        return Ok(None);
    };
    let policy = match args.hub_identity {
        Some(HubIdentityPolicy::Required) => HubPolicy::Required,
        Some(HubIdentityPolicy::Preferred) => HubPolicy::Preferred,
        None => file.identity.unwrap_or(HubPolicy::Required),
    };
    let cache_max_age = args
        .hub_cache_max_age_secs
        .or(file.cache_max_age_secs)
        .map_or(
            HubOptions::DEFAULT_CACHE_MAX_AGE,
            std::time::Duration::from_secs,
        );
    let client_identity = match (&args.hub_client_cert, &args.hub_client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => match (&file.client_cert, &file.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => anyhow::bail!("[hub] client_cert and client_key go together: set both or neither"),
        },
    };
    Ok(Some(HubOptions {
        api_url,
        ca_file: args.hub_ca_file.clone().or(file.ca_file.clone()),
        client_identity,
        policy,
        cache_max_age,
    }))
}

fn run_serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    use jupyter_audit::console::ConsoleSource;
    let source = match (args.store, args.postgres) {
        (Some(store), _) => ConsoleSource::Store(store),
        (None, url) => ConsoleSource::Postgres(jupyter_audit::postgres::connect::PostgresOptions {
            url: url.unwrap_or_default(),
            password_file: args.postgres_password_file,
        }),
    };
    let options = jupyter_audit::console::ServeOptions {
        source,
        collector_socket: args.collector_socket,
        index: args.index,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(jupyter_audit::console::serve(options))?;
    Ok(())
}

fn run_collector(args: CollectorArgs) -> anyhow::Result<()> {
    use jupyter_audit::collector::daemon::{self, DaemonConfig};
    use jupyter_audit::postgres::connect::{PostgresOptions, PostgresTarget};
    use std::time::Duration;
    let file = ConfigFile::load(&args.config)?;
    let hub = hub_options(&args, &file.hub)?;
    let forward_url = args.forward_postgres.or(file.forward.postgres_url.clone());
    let forward = forward_url
        .map(|url| {
            PostgresTarget::new(&PostgresOptions {
                url,
                password_file: args
                    .postgres_password_file
                    .or(file.forward.password_file.clone()),
            })
        })
        .transpose()
        .context("--forward-postgres")?;
    let mut store = store::StoreConfig::new(args.store);
    store.segment_max_bytes = args.segment_max_bytes;
    store.segment_max_age = Duration::from_secs(args.segment_max_age_secs);
    // Forwarding: a checkpoint every second, so that what a root on this host could
    // erase unseen by PostgreSQL is seconds of records.
    store.checkpoint_interval = match (args.checkpoint_interval_ms, args.checkpoint_interval_secs) {
        (Some(ms), _) => Duration::from_millis(ms),
        (None, Some(secs)) => Duration::from_secs(secs),
        (None, None) if forward.is_some() => Duration::from_secs(1),
        (None, None) => Duration::from_secs(60),
    };
    store.reviewers_gid = args
        .reviewers_group
        .as_deref()
        .map(daemon::group_id)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let limits = LimitsSection::from(&args.limits)
        .or(&file.limits)
        .resolve()?;
    let console_names = if args.console_user.is_empty() {
        file.console.users.clone()
    } else {
        args.console_user.clone()
    };
    let console_users = console_names
        .iter()
        .map(|name| daemon::console_user(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)
        .context("--console-user")?;
    let config = DaemonConfig {
        console_users,
        store,
        socket: args.socket,
        socket_mode: args.socket_mode,
        limits,
        forward,
        hub,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(config))?;
    Ok(())
}

/// Diagnostics go to stderr, which Jupyter shows in its log and `jupyter console` in
/// the user's terminal: quiet unless something is wrong; RUST_LOG asks for more.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,zeromq=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run_kernel(args: KernelArgs) -> anyhow::Result<()> {
    let audit = config::audit_settings(&args.audit_options())?;
    let config = ProxyConfig {
        connection_file: args.connection_file,
        kernel_transport: args.kernel_transport.into(),
        max_message_bytes: args.max_message_bytes,
        runtime_dir: args.runtime_dir,
        audit,
        kernel_argv: args.argv,
    };
    // The kernel is spawned from the thread that runs block_on (this one), which
    // lives as long as the process: its parent-death signal is tied to that thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(proxy::run(config))?;
    runtime.shutdown_background();
    launcher::exit_like(status)
}

/// `export`: exits 0 when written, else says why on stderr and exits 2 (as `replay`).
fn run_export(args: cli::ExportArgs) -> ! {
    use jupyter_audit::console::export;
    match export::run_export(&args.into()) {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("jupyter-audit: {error}");
            std::process::exit(2)
        }
    }
}

/// `verify-export`: prints what was checked; exits 0 when no check failed (and, with
/// --strict, nothing is left unproven), 1 when one did, 2 when it cannot check.
fn run_verify_export(args: &VerifyExportArgs) -> ! {
    use jupyter_audit::console::export;
    match export::run_verify_export(&args.into()) {
        Ok(report) => {
            print!("{report}");
            let good = if args.strict {
                report.fully_proven()
            } else {
                report.passed()
            };
            std::process::exit(if good { 0 } else { 1 })
        }
        Err(error) => {
            eprintln!("jupyter-audit: {error}");
            std::process::exit(2)
        }
    }
}

/// Prints the report; exits 0 when intact, 1 when tampered, 2 when it cannot check.
fn run_verify(args: &VerifyArgs) -> ! {
    let Some(dir) = &args.store else {
        run_verify_postgres(args)
    };
    let key = match args.key.as_slice() {
        [] => None,
        [one] if one.store_id.is_none() => Some(one.file.as_path()),
        _ => {
            eprintln!("jupyter-audit: with --store, give one --key FILE");
            std::process::exit(2)
        }
    };
    let checked = store::verify(dir, args.checkpoint.as_deref(), key);
    exit_with_report(checked.as_ref().map(|report| (report, report.is_intact())))
}

/// Prints a verify report and exits 0 (intact) or 1 (tampered); an error that kept the
/// check from being done goes to stderr with 2.
fn exit_with_report(
    checked: Result<(&impl std::fmt::Display, bool), &impl std::fmt::Display>,
) -> ! {
    match checked {
        Ok((report, intact)) => {
            print!("{report}");
            std::process::exit(if intact { 0 } else { 1 })
        }
        Err(error) => {
            eprintln!("jupyter-audit: {error}");
            std::process::exit(2)
        }
    }
}

/// `verify --postgres`: the same exit codes as a store's verify.
fn run_verify_postgres(args: &VerifyArgs) -> ! {
    use jupyter_audit::postgres::verify::{VerifyOptions, verify};
    let mut keys = Vec::new();
    for key in &args.key {
        match key.store_id.or(args.store_id) {
            Some(id) => keys.push((id, key.file.clone())),
            None => {
                eprintln!(
                    "jupyter-audit: --key {}: say which store it belongs to (--key STORE_ID=FILE)",
                    key.file.display()
                );
                std::process::exit(2)
            }
        }
    }
    let options = VerifyOptions {
        postgres: jupyter_audit::postgres::connect::PostgresOptions {
            url: args.postgres.clone().unwrap_or_default(),
            password_file: args.postgres_password_file.clone(),
        },
        store_id: args.store_id,
        keys,
    };
    let checked = verify(&options);
    exit_with_report(checked.as_ref().map(|report| (report, report.is_intact())))
}
