//! The emperor's API against its own OpenAPI document, by a real client
//! that knows nothing else: schemathesis (from PyPI) generates requests for
//! every operation of `/v1/openapi.json` and checks each answer, over the
//! TLS listener with an admin's token, against a live emperor with a group
//! and a site running, and a router. Host only (the VM does not run it): the document and
//! the handlers are the same there, and the generator is slow under an
//! emulated CPU.

use std::process::Command;
use std::time::Duration;

use e2e::*;

#[test]
#[ignore = "root: run the README's test command"]
fn root_the_api_answers_as_its_openapi_document_says() {
    let mut e = Emperor::new();
    let (port, cert) = e.api_over_tls();
    e.write(
        "g",
        "kind = \"group\"\n[limits]\nmemory = \"256M\"\npids = 300\n",
    );
    e.write(
        "shop",
        "kind = \"site\"\ngroup = \"g\"\ndomains = [\"shop.test\"]\n[limits]\nmemory = \"64M\"\npids = 40\n",
    );
    e.start();
    // A real router to ask for the sites' routes.
    let _router = RouterProc::start(&e);
    e.running_pid("shop");
    let admin = e.token(&["create", "--scope", "admin", "--label", "schemathesis"]);
    let base = format!("https://localhost:{port}");
    wait_for(Duration::from_secs(10), "the API over TLS", || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert)
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            .arg(format!("{base}/v1/openapi.json"))
            .output()
            .ok()?;
        (out.stdout == b"200").then_some(())
    });
    let run = Command::new("schemathesis")
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .arg("--tls-verify")
        .arg(&cert)
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "20",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(e.dir.path())
        .output()
        .expect("run schemathesis (scripts/install-deps installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{said}");
    assert!(run.status.success(), "schemathesis:\n{said}");
    // It did test the operations (not a document it could not read).
    assert!(said.contains("/v1/vassals/{name}/notifications"), "{said}");
    // The emperor still answers (the generated calls removed the vassals:
    // DELETE is one of the operations).
    e.status();
}
