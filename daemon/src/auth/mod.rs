//! Users, roles, sessions, bearer tokens and login rate limiting.
//!
//! - [`users`]: the users file (TOML, argon2id hashes), `parkguard user add`
//!   ([`add_user`]) and the `check-config` check ([`check_users_file`]).
//! - [`AuthService`]: the running authenticator. Console users log in with a password and
//!   get a session cookie (HttpOnly, SameSite=Strict, Secure when the listener has TLS) and
//!   a CSRF token that every state-changing request must echo in `X-CSRF-Token`
//!   (double-submit: the token is also in a readable cookie). Machines send
//!   `Authorization: Bearer <token>`; tokens are not cookies, so they need no CSRF token.
//! - Login attempts are limited per client IP and per username
//!   ([`RateLimit`]): a guessing attack from one address, or against one account from many,
//!   is slowed to a few tries per window.
//!
//! Sessions live in memory: a restart logs everyone out, which is acceptable for a
//! control room (operators log in again) and keeps no secrets on disk.

pub mod users;

pub use users::{
    DEFAULT_PASSWORDS, DEMO_USERS, UserEntry, UsersFile, add_token, add_user, add_user_with,
    check_users_file, create_demo_users, hash_password, random_token, read_users_file, remove_user,
    sha256_hex, verify_password,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a user may do. Ordered: each role may do everything the roles below it may.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Acknowledges, shelves, closes alarms.
    Operator,
    /// Changes limits, takes points out of service.
    Engineer,
    /// Manages users.
    Admin,
}

impl Role {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Engineer, Role::Admin];
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        Ok(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "engineer" => Role::Engineer,
            "admin" => Role::Admin,
            _ => {
                return Err(AuthError::Invalid(format!(
                    "unknown role `{s}` (viewer, operator, engineer, admin)"
                )));
            }
        })
    }
}

/// Errors of the users file and of authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file cannot be read or written.
    #[error("{path}: {error}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        error: String,
    },
    /// The users file is not valid TOML for its schema.
    #[error("{path}: {error}")]
    Parse {
        /// File.
        path: String,
        /// Parser message.
        error: String,
    },
    /// Hashing failed.
    #[error("cannot hash password: {0}")]
    Hash(String),
    /// Bad input (username, password, role).
    #[error("{0}")]
    Invalid(String),
}

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Principal {
    /// Login name.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// How they authenticated: `session` or `token:<name>`.
    pub via: String,
    /// The session's CSRF token (sessions only).
    #[serde(skip)]
    pub csrf: Option<String>,
}

struct Session {
    username: String,
    display_name: String,
    role: Role,
    csrf: String,
    last_seen: Instant,
}

/// Sliding-window failure counter per key.
pub struct RateLimit {
    /// Failures allowed in `window`.
    pub max_failures: usize,
    /// The window.
    pub window: Duration,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl RateLimit {
    /// A limiter allowing `max_failures` failed attempts per `window` and key.
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: HashMap::new(),
        }
    }
    /// If `key` is locked out now, how long until it may try again.
    pub fn blocked(&mut self, key: &str, now: Instant) -> Option<Duration> {
        let q = self.failures.get_mut(key)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max_failures {
            q.front()
                .map(|first| self.window.saturating_sub(now.duration_since(*first)))
        } else {
            None
        }
    }
    /// Count a failure.
    pub fn fail(&mut self, key: &str, now: Instant) {
        // Bound memory under a spray of distinct keys: forget expired entries first.
        if self.failures.len() > 10_000 {
            let w = self.window;
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < w));
        }
        self.failures
            .entry(key.to_string())
            .or_default()
            .push_back(now);
    }
    /// Forget `key`'s failures (after a successful login).
    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

/// Settings of the authenticator.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// A session not used for this long is closed. Default 12 h (one shift).
    pub idle_timeout: Duration,
    /// Failed logins allowed per IP per window. Default 10.
    pub max_failures_per_ip: usize,
    /// Failed logins allowed per username per window. Default 5.
    pub max_failures_per_user: usize,
    /// The rate-limit window. Default 5 min.
    pub window: Duration,
    /// Listener uses TLS: cookies get `Secure`.
    pub tls: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(12 * 3600),
            max_failures_per_ip: 10,
            max_failures_per_user: 5,
            window: Duration::from_secs(300),
            tls: false,
        }
    }
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong username or password (never says which).
    BadCredentials,
    /// Too many failures; retry after this long.
    RateLimited(Duration),
}

/// A successful login.
#[derive(Debug)]
pub struct LoginOk {
    /// The user.
    pub principal: Principal,
    /// The session token (goes into the HttpOnly cookie).
    pub session_token: String,
    /// The CSRF token.
    pub csrf: String,
}

#[derive(Default)]
struct Directory {
    users: HashMap<String, UserEntry>,
    /// sha256(token) → (username, token name)
    tokens: HashMap<String, (String, String)>,
}

impl Directory {
    fn new(file: UsersFile) -> Self {
        let mut d = Directory::default();
        for u in file.user {
            for t in &u.token {
                d.tokens.insert(
                    t.sha256.to_ascii_lowercase(),
                    (u.username.clone(), t.name.clone()),
                );
            }
            d.users.insert(u.username.clone(), u);
        }
        d
    }
}

/// The running authenticator (users, tokens, sessions, rate limits).
pub struct AuthService {
    dir: std::sync::RwLock<Directory>,
    /// The users file, when loaded from one (admins change users through it).
    file: Option<std::path::PathBuf>,
    sessions: Mutex<HashMap<String, Session>>,
    by_ip: Mutex<RateLimit>,
    by_user: Mutex<RateLimit>,
    /// Settings.
    pub settings: AuthSettings,
    /// A real argon2 hash to verify against for unknown users, so that the answer takes
    /// the same time whether or not the user exists ([`DUMMY_HASH`]).
    dummy_hash: &'static str,
}

/// The argon2id hash (default parameters, as [`hash_password`] makes them) of a password
/// nobody has, verified for unknown users. A constant instead of hashing one at start-up:
/// argon2's default takes 19 MiB for the hash, which was a third of the daemon's peak
/// memory when it started with 10,000 points (issue #11). Verifying it costs what
/// verifying a real user's does (`the_dummy_hash_has_the_default_parameters`).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$KjrkuCmZ5fTNMoxGxoR26A$DefahTQg4IKM9w/W3og6nNBbqW46mcklewSvJEB2sC8";

impl AuthService {
    /// Build from a users file.
    pub fn from_file(path: &Path, settings: AuthSettings) -> Result<Self, AuthError> {
        let mut svc = Self::new(read_users_file(path)?, settings)?;
        svc.file = Some(path.to_path_buf());
        Ok(svc)
    }

    /// Build from parsed users.
    pub fn new(file: UsersFile, settings: AuthSettings) -> Result<Self, AuthError> {
        Ok(Self {
            dir: std::sync::RwLock::new(Directory::new(file)),
            file: None,
            sessions: Mutex::new(HashMap::new()),
            by_ip: Mutex::new(RateLimit::new(
                settings.max_failures_per_ip,
                settings.window,
            )),
            by_user: Mutex::new(RateLimit::new(
                settings.max_failures_per_user,
                settings.window,
            )),
            settings,
            dummy_hash: DUMMY_HASH,
        })
    }

    fn read_dir(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        match self.dir.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Every user (for the admin's list).
    pub fn users(&self) -> Vec<UserEntry> {
        let mut v: Vec<UserEntry> = self.read_dir().users.values().cloned().collect();
        v.sort_by(|a, b| a.username.cmp(&b.username));
        v
    }

    fn reload(&self) -> Result<(), AuthError> {
        let path = self
            .file
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("users are not from a file".into()))?;
        let d = Directory::new(read_users_file(path)?);
        match self.dir.write() {
            Ok(mut g) => *g = d,
            Err(p) => *p.into_inner() = d,
        }
        Ok(())
    }

    /// Add a user or replace one's role, display name and password, in the users file and
    /// at once in this service; returns the previous role. Blocking (argon2, file).
    pub fn upsert_user(
        &self,
        username: &str,
        display_name: &str,
        role: Role,
        password: &str,
    ) -> Result<Option<Role>, AuthError> {
        let path = self
            .file
            .clone()
            .ok_or_else(|| AuthError::Invalid("users are not from a file".into()))?;
        let before = self.read_dir().users.get(username).map(|u| u.role);
        add_user_with(&path, username, display_name, role, password, false)?;
        self.reload()?;
        Ok(before)
    }

    /// Remove a user from the users file and end their sessions; returns their role.
    pub fn remove_user(&self, username: &str) -> Result<Role, AuthError> {
        let path = self
            .file
            .clone()
            .ok_or_else(|| AuthError::Invalid("users are not from a file".into()))?;
        let removed = users::remove_user(&path, username)?;
        self.reload()?;
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, v| v.username != username);
        }
        Ok(removed.role)
    }

    /// Check a password login. Blocking (argon2): call from `spawn_blocking`.
    pub fn login(&self, username: &str, password: &str, ip: IpAddr) -> Result<LoginOk, LoginError> {
        let now = Instant::now();
        let ip_key = ip.to_string();
        let user_key = username.to_lowercase();
        {
            let ipl = self
                .by_ip
                .lock()
                .map_err(|_| LoginError::BadCredentials)?
                .blocked(&ip_key, now);
            let ul = self
                .by_user
                .lock()
                .map_err(|_| LoginError::BadCredentials)?
                .blocked(&user_key, now);
            if let Some(d) = ipl.into_iter().chain(ul).max() {
                return Err(LoginError::RateLimited(d));
            }
        }
        let user = self.read_dir().users.get(username).cloned();
        let user = user.as_ref();
        let ok = match user {
            Some(u) if !u.password_hash.is_empty() => verify_password(&u.password_hash, password),
            _ => {
                let _ = verify_password(self.dummy_hash, password);
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            if let Ok(mut l) = self.by_ip.lock() {
                l.fail(&ip_key, now);
            }
            if let Ok(mut l) = self.by_user.lock() {
                l.fail(&user_key, now);
            }
            return Err(LoginError::BadCredentials);
        };
        if let Ok(mut l) = self.by_user.lock() {
            l.clear(&user_key);
        }
        let token = random_token();
        let csrf = random_token();
        let principal = Principal {
            username: user.username.clone(),
            display_name: display(user),
            role: user.role,
            via: "session".into(),
            csrf: Some(csrf.clone()),
        };
        if let Ok(mut s) = self.sessions.lock() {
            let idle = self.settings.idle_timeout;
            s.retain(|_, v| now.duration_since(v.last_seen) < idle);
            s.insert(
                sha256_hex(&token),
                Session {
                    username: user.username.clone(),
                    display_name: display(user),
                    role: user.role,
                    csrf: csrf.clone(),
                    last_seen: now,
                },
            );
        }
        Ok(LoginOk {
            principal,
            session_token: token,
            csrf,
        })
    }

    /// The principal of a session token, refreshing its idle timer.
    pub fn session(&self, token: &str) -> Option<Principal> {
        let now = Instant::now();
        let mut s = self.sessions.lock().ok()?;
        let key = sha256_hex(token);
        let sess = s.get_mut(&key)?;
        if now.duration_since(sess.last_seen) >= self.settings.idle_timeout {
            s.remove(&key);
            return None;
        }
        // The role is the user's current one: a demotion or removal takes effect at once.
        let Some(role) = self.read_dir().users.get(&sess.username).map(|u| u.role) else {
            s.remove(&key);
            return None;
        };
        sess.last_seen = now;
        sess.role = role;
        Some(Principal {
            username: sess.username.clone(),
            display_name: sess.display_name.clone(),
            role,
            via: "session".into(),
            csrf: Some(sess.csrf.clone()),
        })
    }

    /// End a session.
    pub fn logout(&self, token: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&sha256_hex(token));
        }
    }

    /// The principal of a bearer token.
    pub fn bearer(&self, token: &str) -> Option<Principal> {
        let dir = self.read_dir();
        let (username, name) = dir.tokens.get(&sha256_hex(token))?;
        let u = dir.users.get(username)?;
        Some(Principal {
            username: u.username.clone(),
            display_name: display(u),
            role: u.role,
            via: format!("token:{name}"),
            csrf: None,
        })
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }
}

fn display(u: &UserEntry) -> String {
    if u.display_name.is_empty() {
        u.username.clone()
    } else {
        u.display_name.clone()
    }
}

/// Constant-time string equality (CSRF tokens).
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unknown users are answered as slowly as known ones only if the dummy hash costs
    /// what a real one does: same algorithm, version and parameters as a fresh hash.
    #[test]
    fn the_dummy_hash_has_the_default_parameters() {
        use argon2::PasswordHash;
        let fresh = hash_password("x").expect("hash");
        let (d, f) = (
            PasswordHash::new(DUMMY_HASH).expect("dummy parses"),
            PasswordHash::new(&fresh).expect("fresh parses"),
        );
        assert_eq!(d.algorithm, f.algorithm);
        assert_eq!(d.version, f.version);
        assert_eq!(d.params, f.params, "{DUMMY_HASH} against {fresh}");
        assert!(verify_password(
            DUMMY_HASH,
            "no such user, constant-time filler"
        ));
        assert!(!verify_password(DUMMY_HASH, "x"));
    }

    #[test]
    fn rate_limit_window() {
        let mut r = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(r.blocked("a", t0), None, "attempt {i}");
            r.fail("a", t0);
        }
        assert!(r.blocked("a", t0).is_some());
        assert_eq!(r.blocked("b", t0), None);
        assert_eq!(r.blocked("a", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Engineer);
        assert!(Role::Engineer > Role::Operator);
        assert!(Role::Operator > Role::Viewer);
        assert_eq!("engineer".parse::<Role>().ok(), Some(Role::Engineer));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn add_user_and_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("users.toml");
        assert!(add_user(&f, "li", Role::Operator, "short").is_err());
        assert!(add_user(&f, "li", Role::Operator, "parkguard").is_err());
        add_user(&f, "li", Role::Operator, "correct horse battery").expect("add");
        assert!(check_users_file(&f, true).is_empty());
        add_user_with(&f, "demo", "演示", Role::Admin, "admin", true).expect("demo add");
        let errs = check_users_file(&f, true);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("demo user")));
        assert!(errs.iter().any(|e| e.contains("well-known default")));
        assert!(check_users_file(&f, false).is_empty());
        let svc = AuthService::from_file(&f, AuthSettings::default()).expect("svc");
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(svc.login("li", "correct horse battery", ip).is_ok());
        assert_eq!(
            svc.login("li", "wrong", ip).err(),
            Some(LoginError::BadCredentials)
        );
        let token = add_token(&f, "li", "prometheus").expect("token");
        let svc = AuthService::from_file(&f, AuthSettings::default()).expect("svc");
        assert_eq!(svc.bearer(&token).map(|p| p.role), Some(Role::Operator));
        assert!(svc.bearer("nope").is_none());
    }
}
