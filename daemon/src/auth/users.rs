//! The users file: who may use the API and console, with which role.
//!
//! ```toml
//! [[user]]
//! username = "wang.li"
//! display_name = "王力"
//! role = "operator"               # viewer | operator | engineer | admin
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # PHC string
//!
//! [[user.token]]                  # bearer tokens for machines (Prometheus, upstream)
//! name = "prometheus"
//! sha256 = "9f86d0..."            # hex SHA-256 of the token; the token itself is never stored
//! ```
//!
//! Tokens are 256-bit random values, so a plain SHA-256 is enough to store them (no
//! dictionary to attack); passwords are chosen by people and get argon2id.

use super::{AuthError, Role};
use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;

/// Shortest password `add_user` accepts.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Passwords that must never protect a production account (demo and vendor defaults).
/// `check_users_file` tries each of them (and the username) against every hash.
pub const DEFAULT_PASSWORDS: &[&str] = &[
    "admin",
    "password",
    "parkguard",
    "123456",
    "12345678",
    "changeme",
    "operator",
    "engineer",
    "viewer",
    "demo",
    "parkguard-demo",
];

/// The whole users file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Every user. Default: none.
    #[serde(default)]
    pub user: Vec<UserEntry>,
}

/// `[[user]]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Login name (ASCII letters, digits, `.`, `-`, `_`; unique).
    pub username: String,
    /// Name shown in the console and the audit log. Default: the username.
    #[serde(default)]
    pub display_name: String,
    /// Role: `viewer`, `operator`, `engineer` or `admin`.
    pub role: Role,
    /// Argon2 PHC string of the password; empty = no password login (tokens only).
    #[serde(default)]
    pub password_hash: String,
    /// Created by `parkguard demo`: such users are refused in a production config.
    /// Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
    /// Bearer tokens of this user (machines). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token: Vec<TokenEntry>,
}

/// `[[user.token]]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// What the token is for (shown in the audit log).
    pub name: String,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hex SHA-256 of a string.
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// A fresh 256-bit random token, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// Argon2id PHC hash of a password with a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `phc`. A malformed hash never matches.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Read and parse a users file.
pub fn read_users_file(path: &Path) -> Result<UsersFile, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| AuthError::Parse {
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

fn write_users_file(path: &Path, file: &UsersFile) -> Result<(), AuthError> {
    let text = toml::to_string(file).map_err(|e| AuthError::Parse {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    let io = |e: std::io::Error| AuthError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    // Write beside, then rename: a crash never leaves a half-written users file.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Add a user (or replace the password and role of an existing one) in `file`, creating the
/// file if needed. This is `parkguard user add`. Refuses short and well-known passwords.
pub fn add_user(file: &Path, username: &str, role: Role, password: &str) -> Result<(), AuthError> {
    add_user_with(file, username, username, role, password, false)
}

/// [`add_user`] with a display name and the demo flag (`parkguard demo` sets it).
pub fn add_user_with(
    file: &Path,
    username: &str,
    display_name: &str,
    role: Role,
    password: &str,
    demo: bool,
) -> Result<(), AuthError> {
    if !valid_username(username) {
        return Err(AuthError::Invalid(format!(
            "username `{username}` must be 1–64 ASCII letters, digits, `.`, `-` or `_`"
        )));
    }
    if !demo {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(AuthError::Invalid(format!(
                "password must have at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        if DEFAULT_PASSWORDS.contains(&password) || password == username {
            return Err(AuthError::Invalid(
                "password is a well-known default or the username; choose another".into(),
            ));
        }
    }
    let mut users = if file.exists() {
        read_users_file(file)?
    } else {
        UsersFile::default()
    };
    let hash = hash_password(password)?;
    match users.user.iter_mut().find(|u| u.username == username) {
        Some(u) => {
            u.password_hash = hash;
            u.role = role;
            u.display_name = display_name.to_string();
            u.demo = demo;
        }
        None => users.user.push(UserEntry {
            username: username.to_string(),
            display_name: display_name.to_string(),
            role,
            password_hash: hash,
            demo,
            token: Vec::new(),
        }),
    }
    write_users_file(file, &users)
}

/// Remove `username` from `file`; returns the removed entry.
pub fn remove_user(file: &Path, username: &str) -> Result<UserEntry, AuthError> {
    let mut users = read_users_file(file)?;
    let i = users
        .user
        .iter()
        .position(|u| u.username == username)
        .ok_or_else(|| AuthError::Invalid(format!("no user `{username}`")))?;
    let removed = users.user.remove(i);
    write_users_file(file, &users)?;
    Ok(removed)
}

/// Create a bearer token for `username` in `file`; returns the token (shown once, only its
/// hash is stored).
pub fn add_token(file: &Path, username: &str, name: &str) -> Result<String, AuthError> {
    let mut users = read_users_file(file)?;
    let user = users
        .user
        .iter_mut()
        .find(|u| u.username == username)
        .ok_or_else(|| AuthError::Invalid(format!("no user `{username}`")))?;
    let token = random_token();
    user.token.push(TokenEntry {
        name: name.to_string(),
        sha256: sha256_hex(&token),
    });
    write_users_file(file, &users)?;
    Ok(token)
}

/// Check a users file for `check-config`: every problem as one line. With `production`,
/// demo users and any password that is a well-known default (or the username) are errors.
pub fn check_users_file(path: &Path, production: bool) -> Vec<String> {
    let shown = path.display();
    let users = match read_users_file(path) {
        Ok(u) => u,
        Err(e) => return vec![e.to_string()],
    };
    let mut errors = Vec::new();
    if users.user.is_empty() {
        errors.push(format!(
            "{shown}: no users; add one with `parkguard user add`"
        ));
    }
    let mut seen = HashSet::new();
    let mut tokens = HashSet::new();
    for (i, u) in users.user.iter().enumerate() {
        let at = format!("{shown}: user[{i}] `{}`", u.username);
        if !valid_username(&u.username) {
            errors.push(format!(
                "{at}: username must be ASCII letters, digits, `.`, `-` or `_`"
            ));
        }
        if !seen.insert(u.username.as_str()) {
            errors.push(format!("{at}: duplicate username"));
        }
        if !u.password_hash.is_empty() && PasswordHash::new(&u.password_hash).is_err() {
            errors.push(format!("{at}: `password_hash` is not an argon2 PHC string"));
        }
        if u.password_hash.is_empty() && u.token.is_empty() {
            errors.push(format!(
                "{at}: neither a password nor a token; it cannot log in"
            ));
        }
        for t in &u.token {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                errors.push(format!(
                    "{at}: token `{}`: `sha256` must be 64 hex digits",
                    t.name
                ));
            }
            if !tokens.insert(t.sha256.to_ascii_lowercase()) {
                errors.push(format!("{at}: token `{}` is used twice", t.name));
            }
        }
        if production {
            if u.demo {
                errors.push(format!(
                    "{at}: demo user in a production config (`park.production = true`); remove it"
                ));
            }
            if !u.password_hash.is_empty() {
                let weak = DEFAULT_PASSWORDS
                    .iter()
                    .copied()
                    .chain(std::iter::once(u.username.as_str()))
                    .any(|p| verify_password(&u.password_hash, p));
                if weak {
                    errors.push(format!(
                        "{at}: password is a well-known default or the username; set a new one with `parkguard user add`"
                    ));
                }
            }
        }
    }
    errors
}

/// The accounts `parkguard demo` creates: (username, display name, role).
pub const DEMO_USERS: &[(&str, &str, Role)] = &[
    ("operator", "值班操作员 (demo)", Role::Operator),
    ("engineer", "仪表工程师 (demo)", Role::Engineer),
    ("admin", "系统管理员 (demo)", Role::Admin),
];

/// A random password for a demo account: 16 characters from an unambiguous alphabet
/// (≈ 80 bits).
fn demo_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b.iter()
        .map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char)
        .collect()
}

/// Write a users file at `path` (replacing any) with the demo accounts `operator`,
/// `engineer` and `admin`, each with a fresh random password and marked `demo = true`, so
/// that [`check_users_file`] with `production = true` refuses them. Returns (username,
/// role, password) for `parkguard demo` to print once; only the argon2 hashes are stored.
pub fn create_demo_users(path: &Path) -> Result<Vec<(String, Role, String)>, AuthError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::Io {
            path: dir.display().to_string(),
            error: e.to_string(),
        })?;
    }
    let mut file = UsersFile::default();
    let mut out = Vec::with_capacity(DEMO_USERS.len());
    for (username, display, role) in DEMO_USERS {
        let password = demo_password();
        file.user.push(UserEntry {
            username: (*username).to_string(),
            display_name: (*display).to_string(),
            role: *role,
            password_hash: hash_password(&password)?,
            demo: true,
            token: Vec::new(),
        });
        out.push(((*username).to_string(), *role, password));
    }
    write_users_file(path, &file)?;
    Ok(out)
}
