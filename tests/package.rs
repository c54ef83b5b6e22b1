//! The Debian package that `scripts/package.sh` builds (scripts/test.sh
//! builds it first and names it in `MONGOQ_DEB`): its contents, the
//! conffile and its mode, the maintainer scripts, and both units verified
//! by `systemd-analyze` in a root extracted from the package.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{stderr, stdout, tempfile};

fn deb() -> PathBuf {
    let path = std::env::var("MONGOQ_DEB").expect(
        "MONGOQ_DEB is not set: run the suite with scripts/test.sh, which builds the package with scripts/package.sh",
    );
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// The package's files under a fresh folder named after `name`.
fn extract(deb: &Path, name: &str) -> PathBuf {
    let root = tempfile(&format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = Command::new("dpkg-deb")
        .arg("--extract")
        .arg(deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    root
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb runs");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn the_package_holds_the_binary_units_docs_and_a_private_conffile() {
    let deb = deb();
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("mongoq_{}_", env!("CARGO_PKG_VERSION")))
            && deb.extension().is_some_and(|e| e == "deb"),
        "named mongoq_<version>_<arch>.deb: {name}"
    );
    let listing = dpkg_deb(&["--contents"], &deb);
    let mode_of = |path: &str| -> String {
        listing
            .lines()
            .find(|line| line.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(mode_of("/usr/bin/mongoq"), "-rwxr-xr-x");
    for path in [
        "/lib/systemd/system/mongoq.service",
        "/lib/systemd/system/mongoq@.service",
        "/usr/share/man/man1/mongoq.1.gz",
        "/usr/share/bash-completion/completions/mongoq",
        "/usr/share/zsh/vendor-completions/_mongoq",
        "/usr/share/fish/vendor_completions.d/mongoq.fish",
    ] {
        assert_eq!(mode_of(path), "-rw-r--r--", "{path}");
    }
    assert_eq!(
        mode_of("/etc/mongoq/mongoq.env"),
        "-rw-------",
        "the env file holds the password"
    );

    let info = dpkg_deb(&["--info"], &deb);
    assert!(info.contains("Package: mongoq"), "{info}");
    assert!(
        info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );

    let control = tempfile(&format!("deb-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&control);
    let out = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("a conffiles list");
    assert_eq!(
        conffiles.trim(),
        "/etc/mongoq/mongoq.env",
        "kept on upgrade"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("a postinst");
    assert!(
        postinst.contains("daemon-reload") && postinst.contains("try-restart"),
        "{postinst}"
    );
    for enabling in [
        "systemctl enable",
        "systemctl start",
        "--now",
        "deb-systemd-helper enable",
    ] {
        assert!(
            !postinst.contains(enabling),
            "nothing is enabled without the operator: {postinst}"
        );
    }
    let prerm = std::fs::read_to_string(control.join("prerm")).expect("a prerm");
    assert!(
        prerm.contains("systemctl stop 'mongoq.service' 'mongoq@*.service'"),
        "{prerm}"
    );
    assert!(control.join("postrm").is_file());
    let _ = std::fs::remove_dir_all(&control);
}

#[test]
fn both_units_verify_and_run_the_packaged_binary() {
    let deb = deb();
    let root = extract(&deb, "deb-root");

    let version = Command::new(root.join("usr/bin/mongoq"))
        .arg("--version")
        .output()
        .unwrap();
    let version = stdout(&version);
    assert!(
        version.starts_with(&format!("mongoq {} (commit ", env!("CARGO_PKG_VERSION"))),
        "the version and the commit: {version}"
    );

    let env = std::fs::read_to_string(root.join("etc/mongoq/mongoq.env")).unwrap();
    for setting in [
        "MONGODB_URI=",
        "MONGOQ_THREADS=",
        "MONGOQ_HANDLER=",
        "MONGOQ_ARGS=",
    ] {
        assert!(
            env.contains(&format!("#{setting}")),
            "{setting} is offered, commented: {env}"
        );
    }
    assert!(
        env.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "every setting is commented"
    );

    let units = root.join("lib/systemd/system");
    for unit in ["mongoq.service", "mongoq@.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(
            text.contains("ExecStart=/usr/bin/mongoq work "),
            "{unit}: {text}"
        );
    }
    // systemd's own units (targets, slices) come from this host, as they
    // would on the machine the package is installed on; ours are not
    // overwritten. The template is verified as an instance.
    let copied = Command::new("cp")
        .args(["-rn", "/lib/systemd/system/."])
        .arg(&units)
        .status()
        .unwrap();
    assert!(copied.success(), "systemd's units are on this host");
    std::fs::copy(
        units.join("mongoq@.service"),
        units.join("mongoq@emails.service"),
    )
    .unwrap();
    let verify = |unit: &str| {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .arg(units.join(unit))
            .output()
            .expect("systemd-analyze runs (scripts/test.sh installs systemd's tools)");
        (
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        )
    };
    for unit in ["mongoq.service", "mongoq@emails.service"] {
        let (ok, said) = verify(unit);
        assert!(ok, "{unit} does not verify: {said}");
        assert!(!said.contains(unit), "{unit}: {said}");
    }
    // The check can fail: a unit whose ExecStart names no binary does.
    let broken = std::fs::read_to_string(units.join("mongoq.service"))
        .unwrap()
        .replace(
            "ExecStart=/usr/bin/mongoq",
            "ExecStart=/usr/bin/mongoq-missing",
        );
    std::fs::write(units.join("mongoq-broken.service"), broken).unwrap();
    let (ok, said) = verify("mongoq-broken.service");
    assert!(
        !ok && said.contains("mongoq-missing"),
        "a broken unit must not verify: {said}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn debians_python_imports_the_packaged_client_and_helper() {
    let deb = deb();
    let root = extract(&deb, "deb-python");
    for example in ["handler.py", "producer.py"] {
        assert!(
            root.join("usr/share/doc/mongoq/examples")
                .join(example)
                .is_file(),
            "{example} is in /usr/share/doc/mongoq/examples"
        );
    }
    // Debian's /usr/bin/python3, isolated (-I: no PYTHONPATH, no user
    // site), with the extracted root's dist-packages directory searched
    // just before its own: the module is found where the package put it,
    // the directory Python searches once the package is installed (its own
    // stays on the path, for Debian's pymongo if installed).
    let dist = "/usr/lib/python3/dist-packages";
    let check = format!(
        r#"import sys, py_compile
sys.path.insert(sys.path.index({dist:?}), {root:?} + {dist:?})
import mongoq, mongoq_handler, mongoq.handler
assert mongoq.__file__.startswith({root:?}), mongoq.__file__
assert mongoq_handler.serve is mongoq.serve
for example in ("handler.py", "producer.py"):
    py_compile.compile({root:?} + "/usr/share/doc/mongoq/examples/" + example, doraise=True)
try:
    import pymongo
except ImportError:
    try:
        mongoq.Queue
        raise SystemExit("mongoq.Queue loaded without pymongo")
    except ImportError as error:
        assert "apt install python3-pymongo" in str(error), error
    print("helper ok; client needs pymongo")
else:
    assert mongoq.Queue.__module__ == "mongoq.client"
    print("helper ok; client ok")
"#,
        root = root.display().to_string()
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-I", "-B", "-c", &check])
        .output()
        .expect("Debian's /usr/bin/python3 runs");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with("helper ok"), "{}", stdout(&out));
    let _ = std::fs::remove_dir_all(&root);
}
