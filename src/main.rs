//! The `haltgate` command: parses arguments and hands off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use haltgate::app::App;
use haltgate::config::{Config, ConfigSpec, Overrides};
use haltgate::operator::{self, ControlClient, Operation};
use haltgate::rules::DEFAULT_MAX_BODY_BYTES;

mod heap_trim;

#[derive(Parser)]
#[command(
    name = "haltgate",
    version,
    about = "Halts agent sessions that lost access to their tools."
)]
struct Cli {
    /// Log lines as text or as one JSON object per line (fields and span fields included).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "HALTGATE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, filtered by `HALTGATE_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

// Parsed once per run; boxing the serve flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Check, test and explain rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Classify recorded exchanges (JSON lines in, one JSON line out per input).
    Classify(ClassifyArgs),
    /// Check or repair a redb store or outbox file (stop the proxy that uses it first).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Read, close and reopen sessions through the control API.
    Sessions(Operator<SessionsCommand>),
    /// List and unblock blocked credentials through the control API.
    Credentials(Operator<CredentialsCommand>),
    /// Read the event log through the control API.
    Events(Operator<EventsCommand>),
    /// Show and reset provider storm breakers through the control API.
    Storm(Operator<StormCommand>),
}

/// Options of every command that talks to a running proxy's control API.
#[derive(Args)]
struct Operator<C: Subcommand> {
    /// The control listener's URL.
    #[arg(
        long = "control",
        value_name = "URL",
        global = true,
        env = "HALTGATE_CONTROL_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    control: String,
    /// Print the API's JSON instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: C,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Show a session.
    Get { id: String },
    /// Close a session (its wakeups are cancelled in the same step).
    Close {
        id: String,
        /// Why, as recorded with the closure.
        #[arg(long, default_value = "Closed by an operator.")]
        reason: String,
    },
    /// Reopen a closed session at the next epoch.
    Reopen { id: String },
    /// List a session's pending wakeups.
    Wakeups { id: String },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// List blocked credentials (fingerprints, never the credentials).
    List,
    /// Unblock a credential by fingerprint.
    Unblock { fingerprint: String },
}

#[derive(Subcommand)]
enum StormCommand {
    /// Show each provider's storm breaker.
    Status,
    /// Close a provider's storm breaker: its halting rules act again at once.
    Reset { provider: String },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print events from the oldest retained one (or after --after); --follow keeps waiting.
    Tail {
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify the file's integrity and decode every row; exit 1 if it is damaged.
    /// Works on a copy, so the file itself is never changed.
    Check {
        /// The store file (the PATH of redb:PATH) or an outbox file.
        path: PathBuf,
    },
    /// Copy the file to PATH.bak-<unix-seconds>, let redb repair what it can, compact it,
    /// then check it again; exit 1 if it is still damaged.
    Repair {
        /// The store file (the PATH of redb:PATH) or an outbox file.
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile every rule file and report every error at once.
    Check {
        /// Rule directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the recorded test cases of DIR/tests and the shared transient corpus.
    Test {
        /// Rule directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Show which guard or rule decides one recorded case, and why.
    Explain {
        /// Rule directory.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// A test case file (JSON).
        case: PathBuf,
    },
    /// Show which recorded responses an edit would decide differently: each line of the
    /// corpus (the JSON lines `haltgate classify` reads) is decided by OLD and by NEW.
    /// Exit 1 when some class changes.
    Diff {
        /// Rule directory as it is now.
        old: PathBuf,
        /// Rule directory with the edit.
        new: PathBuf,
        /// Recorded exchanges, JSON lines.
        #[arg(long, value_name = "FILE")]
        corpus: PathBuf,
        /// HOST=PROVIDER for lines that name no provider (repeatable; adds to the known hosts).
        #[arg(long = "host", value_name = "HOST=PROVIDER", value_parser = parse_host)]
        hosts: Vec<(String, String)>,
    },
}

#[derive(Args)]
struct ClassifyArgs {
    /// Rule directory.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Configuration file whose routes map URL hosts to providers.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// HOST=PROVIDER for lines that name no provider (repeatable; adds to the routes' hosts).
    #[arg(long = "host", value_name = "HOST=PROVIDER", value_parser = parse_host)]
    hosts: Vec<(String, String)>,
    /// Input file of JSON lines, or - for standard input.
    #[arg(default_value = "-")]
    input: String,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file; flags win over it. Read only when given, or when ./haltgate.toml exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for agent traffic [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the control API [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<String>,
    /// Directory of rule files [default: ./rules].
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Session store: redb:PATH, redis://HOST:PORT/DB, redis+cluster://HOST:PORT,… or
    /// redis+sentinel://HOST:PORT,…/MASTER_NAME [default: redb:haltgate.redb].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Outbox file for closures a Redis store could not take yet [default: haltgate-outbox.redb].
    #[arg(long, value_name = "FILE")]
    outbox: Option<PathBuf>,
    /// This instance's durable copy of closures and blocks learned from a Redis store
    /// [default: haltgate-local.redb].
    #[arg(long, value_name = "FILE")]
    local_copy: Option<PathBuf>,
    /// NAME=URL or NAME:PROVIDER=URL: send /NAME/REST to URL/REST, inspected with PROVIDER's
    /// rules and halting in its dialect (default: NAME). Repeatable.
    #[arg(long = "route", value_name = "NAME[:PROVIDER]=URL")]
    routes: Vec<String>,
    /// PEM file with extra CA certificates trusted for upstream TLS.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Upstream TCP connect timeout, e.g. 5s [default: 5s].
    #[arg(long, value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// Time allowed until upstream response headers, e.g. 60s [default: 60s].
    #[arg(long, value_name = "DURATION")]
    response_header_timeout: Option<String>,
    /// Drain deadline for in-flight requests at shutdown [default: 10s].
    #[arg(long, value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// Largest response body inspected by the rules, in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Refuse to start when a route has no rule file or a rule file has no route.
    #[arg(long)]
    strict: bool,
    /// Distinct credentials (else sessions) one provider may close or block per minute before its halting rules act as
    /// shadow rules for the cool-down; 0 turns this off [default: 50].
    #[arg(long, value_name = "N")]
    storm_max_closures_per_minute: Option<u32>,
    /// How long a provider's halting rules stay shadow after too many closures [default: 10m].
    #[arg(long, value_name = "DURATION")]
    storm_cool_down: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Rules(command) => rules(command),
        Command::Classify(args) => classify(args),
        Command::Store(command) => store(command),
        Command::Sessions(args) => {
            let operation = match args.command {
                SessionsCommand::Get { ref id } => Operation::SessionGet(id.clone()),
                SessionsCommand::Close { ref id, ref reason } => Operation::SessionClose {
                    id: id.clone(),
                    reason: reason.clone(),
                },
                SessionsCommand::Reopen { ref id } => Operation::SessionReopen(id.clone()),
                SessionsCommand::Wakeups { ref id } => Operation::SessionWakeups(id.clone()),
            };
            operate(&args.control, args.json, operation)
        }
        Command::Credentials(args) => {
            let operation = match args.command {
                CredentialsCommand::List => Operation::CredentialsList,
                CredentialsCommand::Unblock { ref fingerprint } => {
                    Operation::CredentialUnblock(fingerprint.clone())
                }
            };
            operate(&args.control, args.json, operation)
        }
        Command::Storm(args) => {
            let operation = match args.command {
                StormCommand::Status => Operation::StormStatus,
                StormCommand::Reset { ref provider } => Operation::StormReset(provider.clone()),
            };
            operate(&args.control, args.json, operation)
        }
        Command::Events(args) => {
            let operation = match args.command {
                EventsCommand::Tail { ref after, follow } => Operation::EventsTail {
                    after: after.clone(),
                    follow,
                },
            };
            operate(&args.control, args.json, operation)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one operator command against the control API; the token comes from
/// `HALTGATE_CONTROL_TOKEN`, never from a flag (flags show in process lists).
fn operate(control: &str, as_json: bool, operation: Operation) -> anyhow::Result<ExitCode> {
    let token = std::env::var("HALTGATE_CONTROL_TOKEN").ok();
    let client = ControlClient::new(control, token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = std::io::stdout().lock();
    runtime.block_on(operator::run(&client, operation, as_json, &mut out))?;
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (spec, source) = match &args.config {
        Some(path) => (ConfigSpec::load(path)?, path.display().to_string()),
        None if std::path::Path::new("haltgate.toml").exists() => (
            ConfigSpec::load("haltgate.toml".as_ref())?,
            "haltgate.toml".to_owned(),
        ),
        None => (ConfigSpec::default(), "flags".to_owned()),
    };
    let flags = Overrides {
        listen: args.listen,
        control_listen: args.control_listen,
        rules: args.rules,
        store: args.store,
        outbox: args.outbox,
        local_copy: args.local_copy,
        routes: args.routes,
        upstream_ca: args.upstream_ca,
        connect_timeout: args.connect_timeout,
        response_header_timeout: args.response_header_timeout,
        shutdown_grace: args.shutdown_grace,
        max_body_bytes: args.max_body_bytes,
        storm_max_closures_per_minute: args.storm_max_closures_per_minute,
        storm_cool_down: args.storm_cool_down,
        // Tokens come from the environment or files only: flags would show in `ps`.
        control_token: std::env::var("HALTGATE_CONTROL_TOKEN").ok(),
        control_read_token: std::env::var("HALTGATE_CONTROL_READ_TOKEN").ok(),
        strict: args.strict,
    };
    let mut config = Config::resolve(spec, flags, &source)?;
    if let Some(open_files) = raise_open_file_limit() {
        // Each agent connection may hold an upstream one too; the control listener, stores and
        // logs need the rest. Past the descriptor limit accept fails for both listeners.
        let reserve = config.control_limits.max_connections as u64 + 64;
        let affordable = (open_files.saturating_sub(reserve) / 2).max(1);
        if config.limits.max_connections as u64 > affordable {
            tracing::warn!(
                open_files,
                configured = config.limits.max_connections,
                lowered_to = affordable,
                "The open-file limit is too low for limits.max_connections; lowering it."
            );
            config.limits.max_connections = affordable as usize;
        }
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let app = App::start(config).await?;
        // The binary's own allocator, so the binary's own choice (an embedding application
        // decides for itself).
        let trimmer = heap_trim::spawn(heap_trim::TRIM_EVERY);
        wait_for_signal().await;
        trimmer.abort();
        tracing::info!("Shutting down: draining in-flight requests.");
        app.shutdown();
        app.wait().await;
        tracing::info!("Stopped.");
        Ok(ExitCode::SUCCESS)
    })
}

/// Raises the soft open-file limit to the hard one and answers the limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "Could not raise the open-file limit."
            );
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform.
    Some(limit.rlim_cur as u64)
}

fn parse_host(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(host, provider)| (host.to_ascii_lowercase(), provider.to_owned()))
        .ok_or_else(|| format!("expected HOST=PROVIDER, got `{text}`"))
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn rules(command: RulesCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let ok = match command {
        RulesCommand::Check { dir } => haltgate::rules::check::run(&dir, &mut out)?,
        RulesCommand::Test { dir } => {
            haltgate::rules::cases::run(&dir, DEFAULT_MAX_BODY_BYTES, &mut out)?
        }
        RulesCommand::Explain { rules, case } => {
            haltgate::rules::cases::explain(&rules, &case, DEFAULT_MAX_BODY_BYTES, &mut out)?
        }
        RulesCommand::Diff {
            old,
            new,
            corpus,
            hosts,
        } => rules_diff(&old, &new, &corpus, hosts, &mut out)?,
    };
    Ok(exit_code(ok))
}

fn rules_diff(
    old: &std::path::Path,
    new: &std::path::Path,
    corpus: &std::path::Path,
    mut hosts: Vec<(String, String)>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    let load = |dir: &std::path::Path| {
        haltgate::rules::RuleSet::load_dir(dir)
            .map_err(|errors| anyhow::anyhow!("{}:\n{errors}", dir.display()))
    };
    let (old, new) = (load(old)?, load(new)?);
    let corpus =
        std::fs::read(corpus).with_context(|| format!("cannot read {}", corpus.display()))?;
    let config = Config::resolve(ConfigSpec::default(), Overrides::default(), "rules diff")?;
    hosts.extend(config.routes.host_providers());
    let summary = haltgate::rule_reload::diff::run(&old, &new, &hosts, &corpus, out)?;
    Ok(summary.class_changed == 0 && summary.errors == 0)
}

fn store(command: StoreCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let ok = match command {
        StoreCommand::Check { path } => haltgate::session::check_store_file(&path, &mut out)?,
        StoreCommand::Repair { path } => haltgate::session::repair_store_file(&path, &mut out)?,
    };
    Ok(exit_code(ok))
}

fn classify(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let rules = haltgate::rules::RuleSet::load_dir(&args.rules)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let spec = match &args.config {
        Some(path) => ConfigSpec::load(path)?,
        None => ConfigSpec::default(),
    };
    let config = Config::resolve(spec, Overrides::default(), "classify")?;
    let mut hosts = args.hosts;
    hosts.extend(config.routes.host_providers());
    let mut out = std::io::stdout().lock();
    let ok = if args.input == "-" {
        let mut input = std::io::stdin().lock();
        haltgate::classify::run(&rules, &hosts, config.max_body_bytes, &mut input, &mut out)?
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input))?;
        let mut input = std::io::BufReader::new(file);
        haltgate::classify::run(&rules, &hosts, config.max_body_bytes, &mut input, &mut out)?
    };
    Ok(exit_code(ok))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
