//! Generates Rust bindings for the parts of httpd, APR and mod_proxy this module uses.
//!
//! Header locations come from the installed httpd's own build description (`apxs -q`), so the
//! bindings always match the httpd the module will be loaded into. Each location can be
//! overridden from the environment:
//!
//! | variable            | meaning                                              |
//! |---------------------|------------------------------------------------------|
//! | `APXS`              | the apxs program to ask (default: `apxs`, `apxs2`)    |
//! | `HTTPD_INCLUDE_DIR` | httpd's headers (httpd.h, mod_proxy.h)               |
//! | `APR_INCLUDE_DIR`   | APR's headers (apr.h); may list several, `:`-separated |
//! | `HTTPD_CPPFLAGS`    | extra preprocessor flags (apxs's EXTRA_CPPFLAGS)      |

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ENV_VARS: [&str; 4] = ["APXS", "HTTPD_INCLUDE_DIR", "APR_INCLUDE_DIR", "HTTPD_CPPFLAGS"];

fn main() {
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=include/lbrs_httpd.h");

    let paths = match HeaderPaths::discover() {
        Ok(paths) => paths,
        Err(report) => {
            eprintln!("\n{report}\n");
            std::process::exit(1);
        }
    };

    let mut builder = bindgen::Builder::default()
        .header("include/lbrs_httpd.h")
        .clang_arg(format!("-I{}", paths.httpd.display()))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .layout_tests(true)
        .derive_default(false)
        .derive_debug(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        // Macros become i32, like the C ints they are compared with.
        .default_macro_constant_type(bindgen::MacroTypeVariation::Signed)
        .allowlist_recursively(true);
    for dir in &paths.apr {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    for flag in &paths.cppflags {
        builder = builder.clang_arg(flag);
    }
    for item in ALLOWED_TYPES {
        builder = builder.allowlist_type(item);
    }
    for item in ALLOWED_FUNCTIONS {
        builder = builder.allowlist_function(item);
    }
    for item in ALLOWED_VARS {
        builder = builder.allowlist_var(item);
    }

    let bindings = match builder.generate() {
        Ok(bindings) => bindings,
        Err(err) => {
            eprintln!(
                "\nbindgen could not read include/lbrs_httpd.h: {err}\n\
                 headers searched: httpd {}, APR {:?}, flags {:?}\n\
                 bindgen needs libclang: on Debian/Ubuntu `apt-get install libclang-dev`.\n",
                paths.httpd.display(),
                paths.apr,
                paths.cppflags
            );
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("httpd.rs");
    bindings.write_to_file(&out).unwrap_or_else(|err| panic!("cannot write {}: {err}", out.display()));
    probe_differences(&bindings.to_string());
}

/// What differs between the httpd 2.4 releases this module supports, found in the headers
/// rather than guessed from version numbers. Each becomes a `cfg` the code tests.
///
/// | cfg | set when |
/// |---|---|
/// | `lbrs_worker_name_ex` | `proxy_worker_shared` has `name_ex`, the full member URL (2.4.53 and later); older releases keep only the 96-byte `name` |
/// | `lbrs_hc_http11` | mod_proxy_hcheck has the HTTP/1.1 methods `OPTIONS11`, `HEAD11`, `GET11` (not in 2.4.37) |
fn probe_differences(bindings: &str) {
    println!("cargo::rustc-check-cfg=cfg(lbrs_worker_name_ex)");
    if struct_has_field(bindings, "proxy_worker_shared", "name_ex") {
        println!("cargo::rustc-cfg=lbrs_worker_name_ex");
    }
    println!("cargo::rustc-check-cfg=cfg(lbrs_hc_http11)");
    if bindings.contains("pub const GET11:") {
        println!("cargo::rustc-cfg=lbrs_hc_http11");
    }
}

/// Whether the generated `struct name { ... }` has a field `field`.
fn struct_has_field(bindings: &str, name: &str, field: &str) -> bool {
    let Some(start) = bindings.find(&format!("pub struct {name} {{")) else { return false };
    let body = &bindings[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    body.contains(&format!("pub {field}:"))
}

/// Types the module reads or builds. Everything they reference comes along.
const ALLOWED_TYPES: &[&str] = &[
    "module",
    "command_rec",
    "cmd_parms",
    "request_rec",
    "server_rec",
    "conn_rec",
    "proxy_worker",
    "proxy_worker_shared",
    "proxy_balancer",
    "proxy_balancer_shared",
    "proxy_balancer_method",
    "proxy_server_conf",
    "proxy_is_best_callback_fn_t",
    "ap_slotmem_provider_t",
    "ap_directive_t",
    "ap_filter_t",
    "ap_filter_rec_t",
    "ap_expr_info_t",
    "mpm_child_status",
];

/// Functions the module calls; bindgen sees only real functions, never macros.
const ALLOWED_FUNCTIONS: &[&str] = &[
    "ap_register_provider",
    "ap_lookup_provider",
    "ap_hook_pre_config",
    "ap_hook_post_config",
    "ap_hook_check_config",
    "ap_hook_child_init",
    "ap_hook_child_status",
    "ap_hook_monitor",
    "ap_hook_handler",
    "ap_hook_log_transaction",
    "ap_register_output_filter",
    "ap_add_output_filter_handle",
    "ap_remove_output_filter",
    "ap_pass_brigade",
    "ap_expr_parse_cmd_mi",
    "ap_expr_str_exec",
    "ap_log_error_",
    "ap_log_rerror_",
    "ap_get_server_module_loglevel",
    "ap_get_request_module_loglevel",
    "ap_state_query",
    "ap_get_server_description",
    "ap_mpm_query",
    "ap_find_linked_module",
    "ap_retained_data_get",
    "ap_retained_data_create",
    "ap_set_content_type",
    "ap_rwrite",
    "ap_rflush",
    "ap_check_cmd_context",
    "apr_dynamic_fn_retrieve",
    "apr_optional_hook_add",
    "apr_pool_cleanup_register",
    "apr_pool_cleanup_run",
    "apr_pool_cleanup_kill",
    "apr_pool_cleanup_null",
    "apr_palloc",
    "apr_pstrmemdup",
    "apr_table_set",
    "apr_table_unset",
    "apr_table_get",
    "apr_pstrdup",
    "apr_time_now",
    "apr_thread_mutex_lock",
    "apr_thread_mutex_unlock",
    "apr_global_mutex_lock",
    "apr_global_mutex_unlock",
    "apr_pool_create_ex",
    "apr_pool_pre_cleanup_register",
    "ap_get_conn_socket",
    "apr_os_sock_get",
];

/// Integer macros bindgen can evaluate.
const ALLOWED_VARS: &[&str] = &[
    "MODULE_MAGIC_NUMBER_MAJOR",
    "MODULE_MAGIC_NUMBER_MINOR",
    "AP_SERVER_MAJORVERSION_NUMBER",
    "AP_SERVER_MINORVERSION_NUMBER",
    "AP_SERVER_PATCHLEVEL_NUMBER",
    "MODULE_MAGIC_COOKIE",
    "OK",
    "DECLINED",
    "DONE",
    "HTTP_.*",
    "M_GET",
    "APLOG_.*",
    "APR_HOOK_.*",
    "AP_SQ_.*",
    "AP_MPMQ_.*",
    "PROXY_WORKER_.*",
    "RSRC_CONF",
    "ACCESS_CONF",
    "OR_.*",
    "NOT_IN_.*",
    "GLOBAL_ONLY",
    "APR_SUCCESS",
    "MPM_CHILD_.*",
    "AP_EXPR_FLAG_.*",
    "AP_FTYPE_.*",
];

/// Where the headers are, and how each location was found (for the failure report).
struct HeaderPaths {
    httpd: PathBuf,
    apr: Vec<PathBuf>,
    cppflags: Vec<String>,
}

impl HeaderPaths {
    fn discover() -> Result<Self, String> {
        let mut tried = Vec::new();
        let apxs = find_apxs(&mut tried);

        let httpd = match env::var("HTTPD_INCLUDE_DIR") {
            Ok(dir) => PathBuf::from(dir),
            Err(_) => match &apxs {
                Some(apxs) => PathBuf::from(query(apxs, "INCLUDEDIR").unwrap_or_default()),
                None => PathBuf::new(),
            },
        };
        let apr: Vec<PathBuf> = match env::var("APR_INCLUDE_DIR") {
            Ok(dirs) => env::split_paths(&dirs).collect(),
            Err(_) => apxs
                .as_ref()
                .and_then(|apxs| query(apxs, "APR_INCLUDEDIR"))
                .into_iter()
                .chain(apxs.as_ref().and_then(|apxs| query(apxs, "APU_INCLUDEDIR")))
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        let cppflags = match env::var("HTTPD_CPPFLAGS") {
            Ok(flags) => flags,
            Err(_) => apxs.as_ref().and_then(|apxs| query(apxs, "EXTRA_CPPFLAGS")).unwrap_or_default(),
        }
        .split_whitespace()
        .map(str::to_owned)
        .collect();

        let httpd_ok = httpd.join("httpd.h").is_file() && httpd.join("mod_proxy.h").is_file();
        let apr_ok = apr.iter().any(|dir| dir.join("apr.h").is_file());
        if httpd_ok && apr_ok {
            return Ok(HeaderPaths { httpd, apr, cppflags });
        }
        Err(format!(
            "mod_lbmethod_rs: cannot find the httpd and APR development headers.\n\
             tried: {}\n\
             httpd headers: {} ({})\n\
             APR headers: {:?} ({})\n\
             Install them (Debian/Ubuntu: `apt-get install apache2-dev libclang-dev`), or point\n\
             APXS at your apxs, or set HTTPD_INCLUDE_DIR and APR_INCLUDE_DIR.",
            tried.join("; "),
            httpd.display(),
            if httpd_ok { "ok" } else { "httpd.h or mod_proxy.h missing" },
            apr,
            if apr_ok { "ok" } else { "apr.h missing" },
        ))
    }
}

/// The apxs to ask: `$APXS`, else the first of `apxs`, `apxs2` that answers.
fn find_apxs(tried: &mut Vec<String>) -> Option<String> {
    let candidates: Vec<String> = match env::var("APXS") {
        Ok(apxs) => vec![apxs],
        Err(_) => ["apxs", "apxs2", "/usr/bin/apxs", "/usr/sbin/apxs", "/usr/local/apache2/bin/apxs"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    for candidate in candidates {
        match query(&candidate, "INCLUDEDIR") {
            Some(_) => {
                tried.push(format!("`{candidate} -q INCLUDEDIR` answered"));
                return Some(candidate);
            }
            None => tried.push(format!("`{candidate} -q INCLUDEDIR` failed")),
        }
    }
    None
}

fn query(apxs: &str, variable: &str) -> Option<String> {
    let output = Command::new(apxs).args(["-q", variable]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let value = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (variable != "INCLUDEDIR" || Path::new(&value).is_dir()).then_some(value)
}
