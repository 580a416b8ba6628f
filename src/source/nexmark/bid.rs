//! Nexmark bids built straight into Arrow columns.
//!
//! The `nexmark` crate builds each event as a struct of owned strings (the
//! bid's channel and URL are cloned from shared tables, its `extra` padding
//! is collected one `char` at a time), which cost more than everything the
//! engine then does with a stateless query. This module draws the same
//! random numbers in the same order from the same generator (`SmallRng` of
//! `rand` 0.8, seeded by the event id) and appends the values to column
//! buffers instead, so its output is identical to the crate's (a test checks
//! it bid by bid) with no allocation per row. It covers the crate's default
//! event mix and a constant event rate, which is how Millrace configures it;
//! anything else falls back to the crate.

use std::sync::OnceLock;

use nexmark::config::NexmarkConfig;
use rand08::rngs::SmallRng;
use rand08::seq::SliceRandom;
use rand08::{Rng, RngCore, SeedableRng};

/// Bids go to the first auction of the last `HOT_AUCTION_RATIO` when hot.
const HOT_AUCTION_RATIO: usize = 100;
/// Hot bidders are the second person of the last `HOT_BIDDER_RATIO`.
const HOT_BIDDER_RATIO: usize = 100;
/// Size of the crate's table of non-hot channels.
const CHANNELS: usize = 10_000;
/// Bytes of a bid's fixed fields, subtracted from the average bid size to
/// size the `extra` padding.
const BID_FIXED_BYTES: usize = 32;

/// The values of one bid; strings borrow from the config or a scratch buffer.
pub(super) struct BidRow<'a> {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: &'a str,
    pub url: &'a str,
    pub date_time_ms: u64,
    pub extra: &'a str,
}

/// Generates the bids of a Nexmark stream by their bid offset.
pub(super) struct BidMaker {
    cfg: NexmarkConfig,
    denominator: usize,
    /// Microseconds between events (all generators together), as the crate
    /// computes it, in `f32`.
    inter_event_us: f32,
    extra: Vec<u8>,
}

/// The crate's `get_base_url`.
fn base_url(seed: u64) -> String {
    let rng = &mut SmallRng::seed_from_u64(seed);
    let mut part = || {
        let len = rng.gen_range(3usize..5);
        (0..len)
            .map(|_| {
                if rng.gen_range(0..13) == 0 {
                    '_'
                } else {
                    rng.gen_range(b'a'..=b'z') as char
                }
            })
            .collect::<String>()
    };
    let (a, b, c) = (part(), part(), part());
    format!("https://www.nexmark.com/{a}/{b}/{c}/item.htm?query=1")
}

/// The crate's table of channels and their URLs.
fn channel_urls() -> &'static [(String, String)] {
    static TABLE: OnceLock<Vec<(String, String)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..CHANNELS)
            .map(|i| {
                let mut url = base_url(i as u64);
                let rng = &mut SmallRng::seed_from_u64(i as u64);
                if rng.gen_range(0..10) > 0 {
                    url.push_str("&channel_id=");
                    url.push_str(&((i as i32).reverse_bits() as i64).abs().to_string());
                }
                (format!("channel-{i}"), url)
            })
            .collect()
    })
}

impl BidMaker {
    /// A maker for `cfg`, or `None` when `cfg` needs what only the crate
    /// does (a varying event rate, events out of order).
    pub(super) fn new(cfg: &NexmarkConfig) -> Option<Self> {
        if cfg.first_rate != cfg.next_rate
            || cfg.out_of_order_group_size != 1
            || cfg.first_rate == 0
            || cfg.hot_channels.is_empty()
            || cfg.hot_channels.len() != cfg.hot_urls.len()
            || cfg.bid_proportion == 0
            || cfg.auction_proportion == 0
            || cfg.person_proportion == 0
        {
            return None;
        }
        let inter_event_us =
            cfg.us_per_unit as f32 / cfg.first_rate as f32 * cfg.num_event_generators as f32;
        Some(Self {
            cfg: cfg.clone(),
            denominator: cfg.person_proportion + cfg.auction_proportion + cfg.bid_proportion,
            inter_event_us,
            extra: Vec::with_capacity(128),
        })
    }

    /// How many events of all types come before the bid at bid offset
    /// `offset` (the crate's "global offset").
    pub(super) fn global_offset(&self, offset: u64) -> u64 {
        self.event_number(offset) - self.cfg.first_event_number as u64
    }

    /// The number (position among events of all types) of the bid at bid
    /// offset `offset`.
    pub(super) fn event_number(&self, offset: u64) -> u64 {
        let c = &self.cfg;
        let o = offset as usize;
        (c.first_event_number
            + o / c.bid_proportion * self.denominator
            + c.person_proportion
            + c.auction_proportion
            + o % c.bid_proportion) as u64
    }

    fn last_auction(&self, event_id: usize) -> usize {
        let c = &self.cfg;
        let mut epoch = event_id / self.denominator;
        let mut offset = event_id % self.denominator;
        if offset < c.person_proportion {
            epoch = epoch.saturating_sub(1);
            offset = c.auction_proportion - 1;
        } else if c.person_proportion + c.auction_proportion <= offset {
            offset = c.auction_proportion - 1;
        } else {
            offset -= c.person_proportion;
        }
        epoch * c.auction_proportion + offset
    }

    fn last_person(&self, event_id: usize) -> usize {
        let c = &self.cfg;
        let epoch = event_id / self.denominator;
        let offset = (event_id % self.denominator).min(c.person_proportion - 1);
        epoch * c.person_proportion + offset
    }

    /// The bid at bid offset `offset`. Skips drawing the `extra` padding
    /// (the last draw of a bid) when `with_extra` is false.
    pub(super) fn bid(&mut self, offset: u64, with_extra: bool) -> BidRow<'_> {
        let event_number = self.event_number(offset) as usize;
        let c = &self.cfg;
        let event_id = c.first_event_id + event_number;
        let date_time =
            c.base_time + ((event_number as f32 * self.inter_event_us) / 1000.0).round() as u64;
        let rng = &mut SmallRng::seed_from_u64(event_id as u64);
        let auction = if 0 < rng.gen_range(0..c.hot_auction_ratio) {
            (self.last_auction(event_id) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            let max = self.last_auction(event_id);
            let min = max.saturating_sub(c.in_flight_auctions);
            min + rng.gen_range(0..max - min + 1 + c.auction_id_lead)
        };
        let bidder = if 0 < rng.gen_range(0..c.hot_bidder_ratio) {
            (self.last_person(event_id) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            let people = self.last_person(event_id) + 1;
            let active = people.min(c.active_people);
            people - active + rng.gen_range(0..active + c.person_id_lead)
        };
        let price = (10.0_f32.powf(rng.gen::<f32>() * 6.0) * 100.0).round() as usize;
        let (channel, url) = if rng.gen_range(0..c.hot_channel_ratio) > 0 {
            let index = rng.gen_range(0..c.hot_channels.len());
            (c.hot_channels[index].as_str(), c.hot_urls[index].as_str())
        } else {
            match channel_urls().choose(rng) {
                Some((channel, url)) => (channel.as_str(), url.as_str()),
                None => ("", ""),
            }
        };
        self.extra.clear();
        if with_extra && BID_FIXED_BYTES <= c.avg_bid_byte_size {
            let desired = c.avg_bid_byte_size - BID_FIXED_BYTES;
            let delta = (desired + 2) / 5;
            let size = desired - delta
                + if delta == 0 {
                    0
                } else {
                    rng.gen_range(0..2 * delta)
                };
            push_letters(rng, size, &mut self.extra);
        }
        BidRow {
            auction: (auction + c.first_auction_id) as u64,
            bidder: (bidder + c.first_person_id) as u64,
            price: price as u64,
            channel,
            url,
            date_time_ms: date_time,
            // Only ASCII letters were written.
            extra: std::str::from_utf8(&self.extra).unwrap_or_default(),
        }
    }
}

/// Appends `count` letters `a..=z` to `out`, each drawn exactly as
/// `rng.gen_range(b'a'..=b'z')` draws it, so the padding equals the
/// crate's. rand 0.8 samples a `u8` range through `u32`: a widening
/// multiply of `next_u32()` by the range, retried while the low half is
/// above a zone that makes every letter equally likely. `gen_range` is not
/// inlined and computes that zone with a division per call; here it is a
/// constant (the bid's letters were a third of a q0 profile).
fn push_letters(rng: &mut SmallRng, count: usize, out: &mut Vec<u8>) {
    const RANGE: u32 = (b'z' - b'a') as u32 + 1;
    const ZONE: u32 = u32::MAX - (u32::MAX - RANGE + 1) % RANGE;
    out.reserve(count);
    for _ in 0..count {
        loop {
            let wide = u64::from(rng.next_u32()) * u64::from(RANGE);
            if (wide as u32) <= ZONE {
                out.push(b'a' + (wide >> 32) as u8);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nexmark::event::{Event, EventType};
    use nexmark::EventGenerator;

    use super::*;

    #[test]
    fn letters_equal_gen_range_draw_by_draw() {
        for seed in 0..200u64 {
            let mut ours = SmallRng::seed_from_u64(seed);
            let mut theirs = SmallRng::seed_from_u64(seed);
            let mut got = Vec::new();
            push_letters(&mut ours, 500, &mut got);
            let expected: Vec<u8> = (0..500).map(|_| theirs.gen_range(b'a'..=b'z')).collect();
            assert_eq!(got, expected, "seed {seed}");
            // Both generators are at the same point afterwards.
            assert_eq!(ours.next_u64(), theirs.next_u64(), "seed {seed}");
        }
    }

    #[test]
    fn bids_equal_the_crates_bid_by_bid() {
        let cfg = NexmarkConfig {
            base_time: 1_700_000_000_000,
            ..Default::default()
        };
        let mut maker = BidMaker::new(&cfg).expect("default config is supported");
        let crate_bids = EventGenerator::new(cfg).with_type_filter(EventType::Bid);
        for (offset, event) in crate_bids.take(30_000).enumerate() {
            let Event::Bid(expected) = event else {
                panic!("not a bid")
            };
            let got = maker.bid(offset as u64, true);
            assert_eq!(got.auction, expected.auction as u64, "offset {offset}");
            assert_eq!(got.bidder, expected.bidder as u64, "offset {offset}");
            assert_eq!(got.price, expected.price as u64, "offset {offset}");
            assert_eq!(got.channel, expected.channel, "offset {offset}");
            assert_eq!(got.url, expected.url, "offset {offset}");
            assert_eq!(got.date_time_ms, expected.date_time, "offset {offset}");
            assert_eq!(got.extra, expected.extra, "offset {offset}");
        }
        // Offsets count events of all types as the crate does, so an
        // event limit cuts the stream at the same bid.
        for offset in [0u64, 1, 45, 46, 47, 919, 920, 99_999] {
            let crate_offset = EventGenerator::new(NexmarkConfig::default())
                .with_type_filter(EventType::Bid)
                .with_offset(offset)
                .global_offset();
            assert_eq!(maker.global_offset(offset), crate_offset, "offset {offset}");
        }
    }
}
