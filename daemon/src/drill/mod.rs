//! Drills and backtests: scripted scenarios (with a Gaussian plume for gas releases) and,
//! later, replay of recorded data. A drill runs its own engine instance; its events carry
//! the drill id and reach only channels marked for drills.

pub mod archive;
pub mod backtest;
pub mod cli;
pub mod limits;
pub mod live;
pub mod plume;
pub mod remote;
pub mod replay;
pub mod runner;
pub mod scenario;
