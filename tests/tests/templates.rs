//! The tenant templates of `configs/tenant/`, as a tenant uses them: copied
//! into `~/vassals/` with only the domains line changed, served through the
//! real router from a real container.

use std::path::Path;
use std::time::Duration;

use e2e::*;

/// The template `name` with its domains line set to `domain`.
fn template(name: &str, domain: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/tenant")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut changed = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("domains = ") {
                changed += 1;
                format!("domains = [\"{domain}\"]")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_eq!(changed, 1, "{name}: one domains line to edit");
    out.join("\n") + "\n"
}

const INDEX_PHP: &str = r#"<?php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
header('Content-Type: text/plain');
$ext = (int)(class_exists('PDO') && function_exists('ctype_alpha') && function_exists('iconv') && function_exists('token_get_all'));
$opcache = (int)(function_exists('opcache_get_status') && opcache_get_status() !== false);
echo "php path=$path sum=" . array_sum(range(1, 100)) . " ext=$ext opcache=$opcache\n";
"#;

const WSGI_PY: &str = r#"
def application(env, start):
    start("200 OK", [("Content-Type", "text/plain")])
    return [("wsgi path=%s sum=%d\n" % (env["PATH_INFO"], sum(range(1, 101)))).encode()]
"#;

#[test]
#[ignore = "root: run the README's test command"]
fn root_each_tenant_template_serves_through_the_router_as_written() {
    let mut e = Emperor::new();
    e.write(
        "tpl",
        "kind = \"site\"\ndomains = [\"php.test\", \"wsgi.test\", \"static.test\"]\n\
         [limits]\nmemory = \"512M\"\npids = 200\n",
    );
    e.start();
    let router = RouterProc::start(&e);
    let init = e.running_pid("tpl");
    let uid = e.row("tpl").unwrap()["uid"].as_u64().unwrap() as u32;
    let home = e.home_root.join("tpl");
    // The tenant's files, as the tenant would have put them.
    let out = e.exec_in(
        init,
        uid,
        &e.cgroup("_admin/tpl"),
        "mkdir -p /home/tpl/public_html/css /home/tpl/app && \
         echo 'body { color: red }' > /home/tpl/public_html/css/site.css && \
         echo '<h1>static</h1>' > /home/tpl/public_html/index.html",
    );
    assert!(out.status.success(), "{out:?}");
    for (file, text) in [
        ("public_html/index.php", INDEX_PHP),
        ("app/wsgi.py", WSGI_PY),
    ] {
        std::fs::write(home.join(file), text).unwrap();
        std::os::unix::fs::chown(home.join(file), Some(uid), Some(uid)).unwrap();
    }
    for (name, domain) in [
        ("php", "php.test"),
        ("wsgi", "wsgi.test"),
        ("static", "static.test"),
    ] {
        write_atomic(
            &home.join(format!("vassals/{name}.toml")),
            &template(name, domain),
        );
    }
    let get = |host: &str, path: &str| http_exchange(&router.http, host, path);
    let served = |host: &str, path: &str| {
        wait_for_or(
            Duration::from_secs(30),
            &format!("{host}{path}"),
            || {
                let (status, head, body) = get(host, path);
                (status == 200).then_some((head, body))
            },
            || {
                let logs = std::fs::read_dir(home.join("logs"))
                    .map(|d| {
                        d.flatten()
                            .map(|f| {
                                let t = std::fs::read_to_string(f.path()).unwrap_or_default();
                                format!("--- {}\n{}", f.path().display(), tail(&t, 15))
                            })
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                format!("{:?}\n{logs}", get(host, path))
            },
        )
    };
    let content_type = |head: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };

    // PHP: a page computed by the host's PHP with its extensions and OPcache,
    // a pretty URL through the front controller, a static file with its type,
    // and never a script's source.
    let (_, body) = served("php.test", "/");
    assert_eq!(body, "php path=/ sum=5050 ext=1 opcache=1\n");
    let (_, body) = served("php.test", "/blog/hello-world");
    assert_eq!(
        body,
        "php path=/blog/hello-world sum=5050 ext=1 opcache=1\n"
    );
    let (head, body) = served("php.test", "/css/site.css");
    assert_eq!(content_type(&head), "text/css", "{head}");
    assert_eq!(body, "body { color: red }\n");
    let (_, body) = served("php.test", "/index.php");
    assert!(!body.contains("<?php"), "the source was sent: {body}");

    // WSGI: the app, and the static files beside it.
    let (_, body) = served("wsgi.test", "/api/x");
    assert_eq!(body, "wsgi path=/api/x sum=5050\n");
    let (head, _) = served("wsgi.test", "/css/site.css");
    assert_eq!(content_type(&head), "text/css", "{head}");

    // Static: index.html for /, files with their types, 404 for the rest.
    let (head, body) = served("static.test", "/");
    assert_eq!(body, "<h1>static</h1>\n");
    assert!(content_type(&head).starts_with("text/html"), "{head}");
    let (head, _) = served("static.test", "/css/site.css");
    assert_eq!(content_type(&head), "text/css", "{head}");
    assert_eq!(get("static.test", "/nope").0, 404);
}
