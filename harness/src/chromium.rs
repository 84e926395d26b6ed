//! Debian's real Chromium, headless, driven through the DevTools protocol over a pipe
//! (`--remote-debugging-pipe`: commands on its fd 3, answers and events on its fd 4, each a
//! JSON message ended by a NUL byte). No driver, no WebSocket, nothing downloaded: load a page,
//! evaluate an expression in it, collect what it logged to its console, take a screenshot.
//!
//! Dropping the guard closes the browser (its whole process group) and removes its profile
//! directory, also when the test fails. Every wait is bounded.

use crate::apache::{scratch_dir, stop_group};
use serde_json::{Value, json};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

/// The browser binary: `$LBRS_CHROMIUM`, else Debian's.
pub fn chromium_binary() -> PathBuf {
    std::env::var_os("LBRS_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A running headless Chromium.
pub struct Chromium {
    child: Option<Child>,
    profile: PathBuf,
    commands: Option<File>,
    messages: Receiver<Value>,
    /// Events received while waiting for an answer, oldest first.
    events: Vec<Value>,
    next_id: u64,
}

/// A page (tab) of the browser: its protocol session.
pub struct Page {
    session: String,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Chromium {
    /// Starts the browser with a fresh profile directory and a window of `width` x `height`.
    pub fn start(width: u32, height: u32) -> Result<Chromium, String> {
        let profile = scratch_dir().map_err(|e| format!("cannot make a profile directory: {e}"))?;
        let (to_browser_read, to_browser_write) = pipe()?;
        let (from_browser_read, from_browser_write) = pipe()?;
        let (command_fd, answer_fd) = (to_browser_read.into_raw_fd(), from_browser_write.into_raw_fd());
        let log = File::create(profile.join("chromium.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(chromium_binary());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2): the pipe
        // ends move above 10 first, so that placing them on 3 and 4 cannot clobber each other.
        unsafe {
            command.pre_exec(move || {
                let high_command = libc::fcntl(command_fd, libc::F_DUPFD, 10);
                let high_answer = libc::fcntl(answer_fd, libc::F_DUPFD, 10);
                if high_command < 0
                    || high_answer < 0
                    || libc::dup2(high_command, 3) < 0
                    || libc::dup2(high_answer, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high_command);
                libc::close(high_answer);
                Ok(())
            });
        }
        let spawned = command.spawn();
        // The child has its copies; the parent's ends for the browser close here.
        // SAFETY: the raw descriptors were owned above and are closed once.
        unsafe {
            drop(OwnedFd::from_raw_fd(command_fd));
            drop(OwnedFd::from_raw_fd(answer_fd));
        }
        let child = spawned.map_err(|e| {
            let _ = fs::remove_dir_all(&profile);
            format!("cannot run {} (Debian package chromium): {e}", chromium_binary().display())
        })?;

        let (sender, messages) = channel();
        let reader = File::from(from_browser_read);
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        Ok(Chromium {
            child: Some(child),
            profile,
            commands: Some(File::from(to_browser_write)),
            messages,
            events: Vec::new(),
            next_id: 1,
        })
    }

    /// What the browser printed (its own log, not the pages' consoles).
    pub fn log(&self) -> String {
        fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default()
    }

    /// Sends a command and waits (bounded) for its answer; events that arrive meanwhile are kept.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        bytes.push(0);
        let commands = self.commands.as_mut().ok_or("the browser is closed")?;
        commands.write_all(&bytes).map_err(|e| format!("{method}: cannot write to the browser: {e}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let message = self.receive(deadline).map_err(|e| format!("{method}: {e}"))?;
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    return Err(format!("{method}: {error}"));
                }
                return Ok(message["result"].clone());
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    fn receive(&mut self, deadline: Instant) -> Result<Value, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.messages.recv_timeout(left) {
            Ok(message) => Ok(message),
            Err(RecvTimeoutError::Timeout) => Err("no answer from the browser in time".into()),
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("the browser closed its pipe:\n{}", self.log()))
            }
        }
    }

    /// Waits (at most `within`) for event `name` of `page`, including one already received.
    pub fn wait_event(&mut self, page: &Page, name: &str, within: Duration) -> Result<Value, String> {
        let matches = |event: &Value| event["method"] == name && event["sessionId"] == page.session.as_str();
        if let Some(event) = self.events.iter().find(|e| matches(e)) {
            return Ok(event.clone());
        }
        let deadline = Instant::now() + within;
        loop {
            let message = self.receive(deadline).map_err(|e| format!("waiting for {name}: {e}"))?;
            let found = matches(&message);
            self.events.push(message);
            if found {
                return Ok(self.events.last().cloned().unwrap_or_default());
            }
        }
    }

    /// Opens a new tab, attached, with its console and log reported.
    pub fn new_page(&mut self) -> Result<Page, String> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().ok_or("no targetId")?.to_string();
        let attached =
            self.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        let session = attached["sessionId"].as_str().ok_or("no sessionId")?.to_string();
        let page = Page { session };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&page.session), domain, json!({}))?;
        }
        Ok(page)
    }

    /// Loads `url` in `page` and waits (at most 30 s) for its load event.
    pub fn navigate(&mut self, page: &Page, url: &str) -> Result<(), String> {
        self.events
            .retain(|e| !(e["method"] == "Page.loadEventFired" && e["sessionId"] == page.session.as_str()));
        let answer = self.call(Some(&page.session), "Page.navigate", json!({ "url": url }))?;
        if let Some(error) = answer.get("errorText") {
            return Err(format!("navigating to {url}: {error}"));
        }
        self.wait_event(page, "Page.loadEventFired", Duration::from_secs(30)).map(|_| ())
    }

    /// Evaluates a JavaScript expression in the page (DevTools evaluation, which the page's
    /// Content-Security-Policy does not govern) and returns its value.
    pub fn evaluate(&mut self, page: &Page, expression: &str) -> Result<Value, String> {
        let answer = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(format!("evaluating {expression}: {exception}"));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// A PNG of the whole page (not only the window), written to `path`.
    pub fn screenshot(&mut self, page: &Page, path: &Path) -> Result<(), String> {
        let metrics = self.call(Some(&page.session), "Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let (width, height) =
            (size["width"].as_f64().unwrap_or(1280.0), size["height"].as_f64().unwrap_or(900.0));
        let shot = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
            }),
        )?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data).ok_or("the screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        fs::write(path, png).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// What `page` reported as a problem so far: console messages of level warning or error,
    /// uncaught exceptions, and the browser's own log entries for the page (a Content-Security-
    /// Policy violation, a resource that failed to load) of level warning or error.
    pub fn problems(&self, page: &Page) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["sessionId"] == page.session.as_str())
            .filter_map(|e| {
                let params = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.consoleAPICalled"
                        if matches!(params["type"].as_str(), Some("error" | "warning" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", params["type"], params["args"]))
                    }
                    "Runtime.exceptionThrown" => Some(format!("exception: {}", params["exceptionDetails"])),
                    "Log.entryAdded"
                        if matches!(params["entry"]["level"].as_str(), Some("error" | "warning")) =>
                    {
                        Some(format!("log {}: {}", params["entry"]["level"], params["entry"]["text"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Closes the browser, and waits for it (then kills what is left of its process group).
    pub fn close(&mut self) {
        if self.child.is_some() && self.commands.is_some() {
            let _ = self.call(None, "Browser.close", json!({}));
        }
        self.commands = None;
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- chromium log ({}) -----\n{}", self.profile.display(), self.log());
        }
        self.close();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (with or without padding); `None` for any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = bits << 6 | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_rfc_4648() {
        for (text, bytes) in
            [("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYmFy", "foobar")]
        {
            assert_eq!(super::base64_decode(text).unwrap(), bytes.as_bytes());
        }
        assert_eq!(super::base64_decode("Zm9v!"), None);
    }
}
