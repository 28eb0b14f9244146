//! One configuration struct per binary, read by both clap and serde, and layered:
//! **defaults < TOML file (`--config FILE`) < environment < flags**.
//!
//! A binary's config struct derives [`clap::Args`] (its flags) and [`serde::Deserialize`] (its
//! TOML keys, `#[serde(default, deny_unknown_fields)]`) and implements [`Layered`]. Its fields
//! are the settings themselves, not `Option`s of them: the layering needs no second struct.
//!
//! - **Defaults** are the struct's [`Default`]; serde fills every key the file leaves out
//!   from it.
//! - **The file** is deserialized over the defaults ([`load`]). An unknown key is an error that
//!   names the key, its line and the file.
//! - **Environment and flags** are applied with clap's
//!   [`update_from_arg_matches`](clap::FromArgMatches::update_from_arg_matches), which sets a
//!   field only when its flag was given (or its `env` variable is set: clap ranks a flag above
//!   its variable). The flags are built with [`clap::Args::augment_args_for_update`], so no flag
//!   is required and none carries a clap default: a default there would count as "given" and
//!   overwrite the file. Help texts state each default in words, and each binary's tests check
//!   that the stated default is the real one ([`stated_defaults`]).
//! - Flags without a natural flag form (`[scheduler]`, timeouts) are TOML keys only:
//!   `#[arg(skip)]`.
//! - [`Layered::apply_flags`] is the one hook where a binary differs: which repeatable flags add
//!   to the file's list instead of replacing it ([`append_to`]).
//!
//! ```
//! use clap::Args;
//! use damselfly_net::config::{self, ConfigError, Layered};
//!
//! #[derive(Clone, Debug, Args, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Demo {
//!     /// Port [default: 80].
//!     #[arg(long)]
//!     port: u16,
//! }
//! impl Default for Demo {
//!     fn default() -> Self {
//!         Demo { port: 80 }
//!     }
//! }
//! impl Layered for Demo {
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         Ok(())
//!     }
//! }
//!
//! let cmd = config::command::<Demo>(clap::Command::new("demo"));
//! let matches = cmd.clone().try_get_matches_from(["demo"]).unwrap();
//! assert_eq!(config::from_matches::<Demo>(&matches).unwrap().port, 80);
//! let matches = cmd.try_get_matches_from(["demo", "--port", "8080"]).unwrap();
//! assert_eq!(config::from_matches::<Demo>(&matches).unwrap().port, 8080);
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches, Command};
use serde::de::DeserializeOwned;

/// The id (and long name) of the flag naming the TOML file.
pub const CONFIG_FLAG: &str = "config";

/// A configuration that cannot be used: what failed, and in which file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (missing, unreadable).
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why. Not a `source`: the message carries it already, once.
        reason: std::io::Error,
    },
    /// The config file is not valid TOML for this schema: a syntax error, an unknown key or a
    /// value of the wrong type or format; the message names the key and its line.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why (with the line and the key). Not a `source`: the message carries it already.
        reason: Box<toml::de::Error>,
    },
    /// The command line is not valid ([`try_parse`]: an unknown flag, a bad value, `--ca-cert`
    /// without `--ca-key`), or a flag could not be applied to its field (a bug in the binary:
    /// a flag whose type does not match its field).
    #[error("invalid flags: {0}")]
    Flags(Box<clap::Error>),
    /// A value is out of range or inconsistent with another one.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A binary's configuration: one struct for its flags and its TOML keys. See the module docs.
pub trait Layered: clap::Args + DeserializeOwned + Default {
    /// Checks what neither serde nor clap can: ranges, combinations of values.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Applies the flags (and environment variables) given in `matches` over the file's values.
    /// The default: every flag given replaces its field, lists included. A binary whose
    /// repeatable flags add to the file's list overrides this with [`append_to`].
    fn apply_flags(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.update_from_arg_matches(matches)
    }
}

/// `cmd` with `--config FILE` and `T`'s flags (none of them required, none with a clap default:
/// see the module docs).
pub fn command<T: Layered>(cmd: Command) -> Command {
    let config =
        Arg::new(CONFIG_FLAG).long(CONFIG_FLAG).value_name("FILE").value_parser(clap::value_parser!(PathBuf)).help(
            "TOML config file: its keys are the flags' long names with _ (plural for repeatable flags) and \
             settings that have no flag; flags win over it, and repeatable flags add to its lists unless \
             their help says they replace them",
        );
    T::augment_args_for_update(cmd.arg(config))
}

/// Reads a TOML config file over `T`'s defaults (no validation: [`from_matches`] validates the
/// layered result).
pub fn load<T: Layered>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read { path: path.to_owned(), reason })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), reason: Box::new(e) })
}

/// The layered configuration: `T::default()`, then the file `--config` names, then the
/// environment and the flags; validated.
pub fn from_matches<T: Layered>(matches: &ArgMatches) -> Result<T, ConfigError> {
    let mut config = match matches.get_one::<PathBuf>(CONFIG_FLAG) {
        Some(path) => load(path)?,
        None => T::default(),
    };
    config.apply_flags(matches).map_err(|e| ConfigError::Flags(Box::new(e)))?;
    config.validate()?;
    Ok(config)
}

/// Parses `argv` with [`command`]`(cmd)` and layers the configuration. Usage errors, `--help` and
/// `--version` exit the process the way clap does (usage errors with code 2).
pub fn parse<T: Layered, I, S>(cmd: Command, argv: I) -> Result<T, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    from_matches(&command::<T>(cmd).get_matches_from(argv))
}

/// [`parse`] without exiting: a usage error (or `--help`) is a [`ConfigError::Flags`].
pub fn try_parse<T: Layered, I, S>(cmd: Command, argv: I) -> Result<T, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let matches = command::<T>(cmd).try_get_matches_from(argv).map_err(|e| ConfigError::Flags(Box::new(e)))?;
    from_matches(&matches)
}

/// For [`Layered::apply_flags`]: a repeatable flag adds to the file's list. Take the file's list
/// out of the field before applying the flags, then call this with it: the field ends as the
/// file's entries followed by the flags' (or the file's alone when the flag was not given).
pub fn append_to<T>(field: &mut Vec<T>, file: Vec<T>) {
    let flags = std::mem::replace(field, file);
    field.extend(flags);
}

/// The defaults `T`'s help texts state: `(--flag, VALUE)` for every flag whose short help says
/// `[default: VALUE]` with a literal value (not `none`, not words).
pub fn stated_defaults<T: Layered>() -> Vec<(String, String)> {
    let cmd = command::<T>(Command::new("defaults"));
    cmd.get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let help = arg.get_help()?.to_string();
            let value = help.split("[default: ").nth(1)?.split(']').next()?.to_owned();
            let literal = !value.contains(' ') && value != "none";
            literal.then(|| (format!("--{long}"), value))
        })
        .collect()
}

/// For tests: [`try_parse`] of `binary --config FILE FLAGS...`, with `toml` written to a
/// temporary file `FILE` named after `binary` (removed afterwards).
pub fn try_parse_with_file<T: Layered>(binary: &'static str, toml: &str, flags: &[&str]) -> Result<T, ConfigError> {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("{binary}-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).map_err(|reason| ConfigError::Read { path: path.clone(), reason })?;
    let argv = [binary.into(), "--config".into(), path.clone().into_os_string()];
    let result = try_parse(Command::new(binary), argv.into_iter().chain(flags.iter().map(OsString::from)));
    let _ = std::fs::remove_file(&path);
    result
}

/// The checks every binary's configuration must pass; call it from the binary's tests. Panics
/// with what is wrong:
/// - no flag is required (a required flag could not be set by the file alone);
/// - every default a help text states is the real one: `--flag VALUE` gives `T::default()`;
/// - without a file or flags, the defaults pass validation unless `defaults_valid` is false;
/// - an unknown TOML key is refused, naming the key, the file and the line;
/// - a missing config file is an error naming it.
///
/// Returns the flags whose stated default it checked, for the caller to compare with the list it
/// expects (a default stated in words, or mistyped, would drop out silently otherwise).
pub fn check_layering<T: Layered + std::fmt::Debug>(binary: &'static str, defaults_valid: bool) -> Vec<String> {
    let cmd = command::<T>(Command::new(binary));
    if let Some(arg) = cmd.get_arguments().find(|a| a.is_required_set()) {
        panic!("{binary}: --{} is required", arg.get_id());
    }
    let default = format!("{:?}", T::default());
    let stated = stated_defaults::<T>();
    assert!(!stated.is_empty(), "{binary}: no help text states a default");
    let checked = stated.iter().map(|(flag, _)| flag.clone()).collect();
    for (flag, value) in stated {
        let mut given = T::default();
        let matches = cmd.clone().try_get_matches_from([binary, &flag, &value]);
        let applied = matches.map(|m| given.apply_flags(&m));
        assert!(matches!(applied, Ok(Ok(()))), "{binary} {flag} {value}: {applied:?}");
        assert_eq!(format!("{given:?}"), default, "{binary}: {flag}'s help says [default: {value}]");
    }
    let plain = try_parse::<T, _, _>(Command::new(binary), [binary]);
    assert_eq!(plain.is_ok(), defaults_valid, "{binary} without flags: {:?}", plain.err());
    let err = try_parse_with_file::<T>(binary, "\n\nno_such_key = 1\n", &[]).expect_err("an unknown key is refused");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{binary}: {text}");
    assert!(text.contains("no_such_key") && text.contains("line 3") && text.contains(".toml"), "{binary}: {text}");
    let missing = ["x", "--config", "/nonexistent/damselfly.toml"];
    let err = try_parse::<T, _, _>(Command::new(binary), missing).expect_err("a missing file is an error");
    assert!(err.to_string().starts_with("cannot read config file /nonexistent/damselfly.toml"), "{binary}: {err}");
    checked
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};
    use std::time::Duration;

    /// A config with every kind of field the binaries have.
    #[derive(Clone, Debug, PartialEq, Args, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        /// Listen address [default: 127.0.0.1:80].
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// A duration [default: 10s].
        #[arg(long, value_parser = humantime::parse_duration)]
        #[serde(with = "humantime_serde")]
        timeout: Duration,
        /// Optional [default: none].
        #[arg(long)]
        name: Option<String>,
        /// Repeatable, added to the file's list.
        #[arg(long = "extra")]
        extras: Vec<String>,
        /// Repeatable, replacing the file's list.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// A number [default: 1].
        #[arg(long)]
        level: u32,
        /// File only.
        #[arg(skip)]
        file_only: bool,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                listen: "127.0.0.1:80".parse().unwrap(),
                timeout: Duration::from_secs(10),
                name: None,
                extras: Vec::new(),
                peers: Vec::new(),
                level: 1,
                file_only: false,
            }
        }
    }

    impl Layered for Demo {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.timeout.is_zero() {
                return Err(ConfigError::Invalid("timeout must be greater than zero".into()));
            }
            Ok(())
        }

        fn apply_flags(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
            let file = std::mem::take(&mut self.extras);
            self.update_from_arg_matches(matches)?;
            append_to(&mut self.extras, file);
            Ok(())
        }
    }

    fn with_file(toml: &str, flags: &[&str]) -> Result<Demo, ConfigError> {
        try_parse_with_file("demo", toml, flags)
    }

    fn flags_only(flags: &[&str]) -> Result<Demo, ConfigError> {
        try_parse(Command::new("demo"), ["demo"].iter().chain(flags))
    }

    #[test]
    fn the_checks_every_binary_passes() {
        assert_eq!(check_layering::<Demo>("demo", true), ["--listen", "--timeout", "--level"]);
        assert_eq!(
            stated_defaults::<Demo>(),
            [("--listen", "127.0.0.1:80"), ("--timeout", "10s"), ("--level", "1")].map(|(f, v)| (f.into(), v.into()))
        );
    }

    #[test]
    fn defaults_without_file_or_flags() {
        assert_eq!(flags_only(&[]).unwrap(), Demo::default());
        assert_eq!(with_file("", &[]).unwrap(), Demo::default());
    }

    #[test]
    fn file_values_over_defaults_and_flags_over_file() {
        let file = "listen = \"0.0.0.0:9\"\ntimeout = \"3s\"\nname = \"a\"\nfile_only = true\n";
        let c = with_file(file, &[]).unwrap();
        assert_eq!((c.listen.port(), c.timeout, c.name.as_deref()), (9, Duration::from_secs(3), Some("a")));
        assert!(c.file_only);
        assert_eq!(c.level, 1, "a key the file leaves out keeps its default");
        let c = with_file(file, &["--timeout", "5s", "--name", "b"]).unwrap();
        assert_eq!((c.listen.port(), c.timeout, c.name.as_deref()), (9, Duration::from_secs(5), Some("b")));
        assert!(c.file_only, "a flag given for one field leaves the others as the file set them");
        assert_eq!(flags_only(&["--level", "4"]).unwrap().level, 4);
    }

    #[test]
    fn lists_append_or_replace_as_the_binary_says() {
        let file = "extras = [\"x\"]\npeers = [\"p\"]\n";
        let c = with_file(file, &[]).unwrap();
        assert_eq!((c.extras, c.peers), (vec!["x".to_owned()], vec!["p".to_owned()]));
        let c = with_file(file, &["--extra", "y", "--extra", "z", "--peer", "q"]).unwrap();
        assert_eq!(c.extras, ["x", "y", "z"]);
        assert_eq!(c.peers, ["q"]);
    }

    /// A setting with an environment variable (none of the binaries' settings has one yet).
    #[derive(Clone, Debug, Default, Args, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct WithEnv {
        /// A number.
        #[arg(long, env = "DAMSELFLY_NET_CONFIG_TEST_LEVEL")]
        level: u32,
    }

    impl Layered for WithEnv {
        fn validate(&self) -> Result<(), ConfigError> {
            Ok(())
        }
    }

    #[test]
    fn environment_between_file_and_flags() {
        let level = |flags: &[&str]| try_parse_with_file::<WithEnv>("env", "level = 3\n", flags).unwrap().level;
        assert_eq!(level(&[]), 3, "the file wins over the defaults");
        // The only test that reads this variable.
        std::env::set_var("DAMSELFLY_NET_CONFIG_TEST_LEVEL", "7");
        let (from_env, from_flag) = (level(&[]), level(&["--level", "9"]));
        std::env::remove_var("DAMSELFLY_NET_CONFIG_TEST_LEVEL");
        assert_eq!(from_env, 7, "the environment wins over the file");
        assert_eq!(from_flag, 9, "a flag wins over the environment");
    }

    #[test]
    fn unknown_key_names_the_key_the_line_and_the_file() {
        let err = with_file("listen = \"0.0.0.0:9\"\nbogus_key = 1\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
        assert!(text.starts_with("invalid config file /") && text.contains("demo-"), "{text}");
        assert!(text.contains("line 2") && text.contains("unknown field `bogus_key`"), "{text}");
    }

    #[test]
    fn bad_values_say_which_and_why() {
        let text = with_file("timeout = \"soon\"\n", &[]).unwrap_err().to_string();
        assert!(text.contains("demo-") && text.contains("timeout = \"soon\"") && text.contains("line 1"), "{text}");
        let text = with_file("listen = 80\n", &[]).unwrap_err().to_string();
        assert!(text.contains("listen") && text.contains("line 1"), "{text}");
        let err = flags_only(&["--timeout", "soon"]).unwrap_err();
        assert!(matches!(err, ConfigError::Flags(_)));
        let text = err.to_string();
        assert!(text.contains("--timeout") && text.contains("soon"), "{text}");
        let text = flags_only(&["--timeout", "0s"]).unwrap_err().to_string();
        assert_eq!(text, "invalid configuration: timeout must be greater than zero");
        let text = with_file("timeout = \"0s\"\n", &[]).unwrap_err().to_string();
        assert_eq!(text, "invalid configuration: timeout must be greater than zero", "the file is validated too");
    }
}
