//! A small W3C WebDriver client (blocking, over ureq) for Debian's chromedriver driving its
//! headless Chromium: only what the Backups page tests need.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .chain([PathBuf::from("/usr/bin").join(n)])
            .find(|p| p.is_file())
    })
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    pub downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session whose
    /// downloads land in `downloads`. `.ci/run` installs both (Debian's chromium and
    /// chromium-driver).
    pub fn start() -> Browser {
        let chromedriver = find_program(&["chromedriver"]).expect(
            "chromedriver not found: install Debian's chromium and chromium-driver (.ci/run does)",
        );
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .expect("chromium not found: install Debian's chromium (.ci/run does)");
        let port = crate::support::free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while agent.get(&format!("{base}/status")).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let downloads = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                    "safebrowsing.enabled": false,
                },
            },
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            agent,
            downloads,
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b.call(
            "POST",
            &format!("/session/{}/goog/cdp/execute", b.session),
            Some(json!({"cmd": "Browser.setDownloadBehavior", "params": {
                "behavior": "allow", "downloadPath": b.downloads.path()}})),
        );
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let resp = self
            .agent
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 400, "webdriver {method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self.call(
            "POST",
            &self.s("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .unwrap_or_else(|| panic!("finding {css}: {v}"))
            .iter()
            .map(|e| {
                Element(
                    e[ELEMENT]
                        .as_str()
                        .unwrap_or_else(|| panic!("{e}"))
                        .to_string(),
                )
            })
            .collect()
    }

    /// The first element `css` matches, waiting up to `limit` for it.
    pub fn wait_for(&self, css: &str, limit: Duration) -> Element {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            assert!(
                t0.elapsed() < limit,
                "no {css} after {limit:?} on {}: {}",
                self.url(),
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn find(&self, css: &str) -> Element {
        self.wait_for(css, Duration::from_secs(5))
    }

    pub fn exists(&self, css: &str) -> bool {
        !self.find_all(css).is_empty()
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.click_element(&e);
    }

    pub fn click_element(&self, e: &Element) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/click", e.0)),
            Some(json!({})),
        );
    }

    /// Types `text` into the element (a file input takes a path).
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{}/clear", e.0)),
            Some(json!({})),
        );
        self.send_keys(&e, text);
    }

    pub fn send_keys(&self, e: &Element, text: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/value", e.0)),
            Some(json!({ "text": text })),
        );
    }

    /// The text of the first element `css` matches ("" when none), read in one script so a
    /// page being replaced cannot leave a stale reference.
    pub fn text(&self, css: &str) -> String {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({
                "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                "args": [css],
            })),
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Waits until the text of `css` holds `part`.
    pub fn wait_contains(&self, css: &str, part: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.text(css).contains(part) {
            assert!(
                t0.elapsed() < limit,
                "{css} does not hold {part:?} on {}: {}",
                self.url(),
                self.text("main")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` is `want` (a page that is still loading, or the old one).
    pub fn wait_text(&self, css: &str, want: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let got = self.text(css);
            if got == want {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{css} is {got:?}, not {want:?}, on {}: {}",
                self.url(),
                self.text("main")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn property(&self, css: &str, name: &str) -> Value {
        let e = self.find(css);
        self.call(
            "GET",
            &self.s(&format!("/element/{}/property/{name}", e.0)),
            None,
        )
    }

    pub fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", &self.s("/cookie"), None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.s("/window/rect"),
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Saves a PNG of the viewport as `dir/name.png`.
    pub fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        use base64::Engine;
        let v = self.call("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Waits for one new finished download (no `.crdownload` left) and returns its path.
    pub fn wait_download(&self, before: usize, limit: Duration) -> PathBuf {
        let t0 = Instant::now();
        loop {
            let entries: Vec<PathBuf> = std::fs::read_dir(self.downloads.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            let partial = entries.iter().any(|p| {
                p.extension()
                    .is_some_and(|x| x == "crdownload" || x == "tmp")
            });
            if entries.len() > before && !partial {
                let mut newest: Vec<_> = entries
                    .into_iter()
                    .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
                    .collect();
                newest.sort();
                return newest.pop().unwrap().1;
            }
            assert!(t0.elapsed() < limit, "no download arrived in {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn download_count(&self) -> usize {
        std::fs::read_dir(self.downloads.path()).unwrap().count()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = self.agent.delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
