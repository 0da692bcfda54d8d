use super::*;
use clap::CommandFactory;

#[test]
fn the_documented_flag_table_is_the_help() {
    let documented = include_str!("../../../../docs/configuration.md");
    let table = flags_markdown();
    assert!(
        documented.contains(&table),
        "docs/configuration.md's flag table is out of date; replace it with:\n{table}"
    );
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut argv = vec!["wasm-host"];
    argv.extend_from_slice(args);
    crate::commands::config::parse_from(argv.into_iter().map(Into::into).collect())
}

#[test]
fn memory_limit_accepts_kubernetes_binary_units() {
    let cli = parse(&["--memory-limit", "128Mi", "m.wasm"]).expect("128Mi parses");
    assert_eq!(cli.serve.memory_limit, 128 << 20);
    let cli = parse(&["--max-body", "1Gi", "m.wasm"]).expect("1Gi parses");
    assert_eq!(cli.serve.max_body, 1 << 30);
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("128Mi"), "the help names Kubernetes units");
}

#[test]
fn bind_accepts_ip_port_host_port_and_a_bare_port() {
    assert_eq!(
        parse_bind("127.0.0.1:8000"),
        Ok(([127, 0, 0, 1], 8000).into())
    );
    assert_eq!(
        parse_bind("[::1]:8000"),
        "[::1]:8000".parse().map_err(|_| String::new())
    );
    assert_eq!(parse_bind(":8000"), Ok(([0, 0, 0, 0], 8000).into()));
    let local = parse_bind("localhost:8000").expect("localhost resolves");
    assert!(local.ip().is_loopback() && local.port() == 8000, "{local}");
    for bad in [
        "8000",
        "localhost",
        ":http",
        "localhost:99999",
        "no such host!:80",
    ] {
        let err = parse_bind(bad).expect_err(bad);
        assert!(
            err.contains(":PORT"),
            "{bad}: the error shows the forms: {err}"
        );
    }
    let err = parse(&["--bind", "localhost", "m.wasm"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("HOST:PORT (localhost:8000)"), "{err}");
}

#[test]
fn help_lists_every_endpoint() {
    let help = Cli::command().render_long_help().to_string();
    for route in [
        "/predict",
        "/v2/models/{name}/infer",
        "/v2/health/ready",
        "/health",
        "/metrics",
    ] {
        assert!(help.contains(route), "--help leaves out {route}");
    }
}

#[test]
fn inspect_and_plan_take_the_cache_and_precompiled_flags() {
    for command in ["inspect", "plan"] {
        let mut args = vec![
            command,
            "m.wasm",
            "--cache-dir",
            "/c",
            "--allow-precompiled",
        ];
        if command == "plan" {
            args.extend(["--rate", "1"]);
        }
        let code = match parse(&args).expect(command).into_command() {
            Command::Inspect(args) => args.code,
            Command::Plan(args) => args.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code.cache_dir.as_deref(), Some(std::path::Path::new("/c")));
        assert!(code.allow_precompiled);
    }
}
