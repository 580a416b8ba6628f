//! Taking records from librdkafka many at a time.
//!
//! rdkafka's safe consumer hands out one record per `poll`, and each poll
//! reads the clock, takes the queue's lock and allocates a handle for the
//! record. A reader takes thousands of records per batch, so it reads them
//! with librdkafka's batch call instead: the partitions it reads are
//! forwarded to a queue of its own ([`RecordQueue`]), and
//! `rd_kafka_consume_batch_queue` fills an array from it ([`Polled`]).
//! Events that are not records (errors, commit replies) stay on the
//! consumer's own queue, which the reader still serves with `poll`.
//!
//! This is the only place Millrace calls librdkafka directly.

use std::ffi::{c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{MillraceError, Result};

/// What the decoder reads from a Kafka record, whichever way it was taken.
pub trait KafkaRecord {
    /// The record's partition.
    fn partition(&self) -> i32;
    /// The record's offset.
    fn offset(&self) -> i64;
    /// The key, if any.
    fn key(&self) -> Option<&[u8]>;
    /// The value, if any.
    fn payload(&self) -> Option<&[u8]>;
    /// The record's timestamp in milliseconds since the epoch, if it has one.
    fn timestamp_millis(&self) -> Option<i64>;
    /// The value of the first header called `name`.
    fn header(&self, name: &CStr) -> Option<&[u8]>;
    /// Bytes of key and value.
    fn size(&self) -> usize {
        self.key().map_or(0, <[u8]>::len) + self.payload().map_or(0, <[u8]>::len)
    }
}

impl KafkaRecord for BorrowedMessage<'_> {
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }
    fn timestamp_millis(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
    fn header(&self, name: &CStr) -> Option<&[u8]> {
        self.headers()?
            .iter()
            .find(|h| h.key.as_bytes() == name.to_bytes())
            .and_then(|h| h.value)
    }
}

/// A queue that receives the records of the partitions forwarded to it.
/// It must be dropped before the consumer it was made from (the reader
/// keeps both in one struct, the queue first).
pub struct RecordQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
}

// The queue handle is librdkafka's, which locks internally; the reader
// moves it to its own thread with the consumer.
unsafe impl Send for RecordQueue {}

impl RecordQueue {
    /// A new queue of `consumer`'s, with no partitions forwarded yet.
    pub fn try_new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Result<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives, and
        // the queue is destroyed before the consumer (see the type's doc).
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        NonNull::new(queue)
            .map(|queue| Self { queue })
            .ok_or_else(|| MillraceError::execution("cannot create a Kafka record queue"))
    }

    /// Sends `partition` of `topic`'s records to this queue. Called before
    /// the partition is assigned, so that no record goes elsewhere.
    pub fn add_partition<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> Result<()> {
        let name = CString::new(topic)
            .map_err(|_| MillraceError::execution("a Kafka topic name holds a NUL byte"))?;
        // SAFETY: valid client pointer and NUL-terminated name; the
        // partition queue reference is released once forwarded.
        unsafe {
            let partition_queue = rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            );
            if partition_queue.is_null() {
                return Err(MillraceError::execution(format!(
                    "Kafka partition {partition} of '{topic}' has no queue"
                )));
            }
            rdsys::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
            rdsys::rd_kafka_queue_destroy(partition_queue);
        }
        Ok(())
    }

    /// Appends to `into` the records already queued, up to `max` in all;
    /// if none is queued, waits up to `wait` for the first.
    pub fn take<'q>(&'q self, wait: Duration, max: usize, into: &mut Polled<'q>) {
        if into.messages.len() >= max {
            return;
        }
        // librdkafka's batch call waits until the array is full or the
        // time is up, so wait for one record, then take what is queued.
        self.take_up_to(wait, 1, into);
        if !into.messages.is_empty() {
            self.take_up_to(Duration::ZERO, max - into.messages.len(), into);
        }
    }

    fn take_up_to<'q>(&'q self, wait: Duration, n: usize, into: &mut Polled<'q>) {
        if n == 0 {
            return;
        }
        let wait_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        into.messages.reserve(n);
        let len = into.messages.len();
        // SAFETY: the spare capacity holds at least `n` pointers; librdkafka
        // writes `taken` of them, which then belong to `into` (destroyed in
        // its `Drop`, while this queue, and so the consumer, still lives:
        // `into` borrows the queue).
        unsafe {
            let taken = rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                wait_ms,
                into.messages.as_mut_ptr().add(len),
                n,
            );
            if taken > 0 {
                into.messages.set_len(len + taken as usize);
            }
        }
    }
}

impl Drop for RecordQueue {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_queue_new`, destroyed once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Records taken from a [`RecordQueue`], owned until dropped.
pub struct Polled<'q> {
    messages: Vec<*mut rdsys::rd_kafka_message_t>,
    queue: PhantomData<&'q RecordQueue>,
}

impl<'q> Polled<'q> {
    /// No records yet.
    pub fn new() -> Self {
        Self {
            messages: Vec::new(),
            queue: PhantomData,
        }
    }

    /// Number of entries taken (records and errors).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// The entries taken, in order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        // SAFETY: each pointer is a live message owned by `self`.
        self.messages
            .iter()
            .map(|&m| Entry(unsafe { &*(m as *const rdsys::rd_kafka_message_t) }))
    }
}

impl Default for Polled<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Polled<'_> {
    fn drop(&mut self) {
        for &m in &self.messages {
            // SAFETY: each message was handed out by librdkafka once.
            unsafe { rdsys::rd_kafka_message_destroy(m) }
        }
    }
}

/// One entry taken from the queue: a record, or an error for a partition.
#[derive(Clone, Copy)]
pub struct Entry<'a>(&'a rdsys::rd_kafka_message_t);

impl Entry<'_> {
    /// The error this entry reports instead of a record, if it does.
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        match self.0.err {
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            e => Some(e.into()),
        }
    }
}

/// `len` bytes at `ptr`, or `None` for a null pointer.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable bytes that live as long
/// as `'a`.
unsafe fn bytes<'a>(ptr: *const c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(ptr as *const u8, len))
    }
}

impl KafkaRecord for Entry<'_> {
    fn partition(&self) -> i32 {
        self.0.partition
    }
    fn offset(&self) -> i64 {
        self.0.offset
    }
    fn key(&self) -> Option<&[u8]> {
        // SAFETY: librdkafka's key pointer and length, alive with the message.
        unsafe { bytes(self.0.key, self.0.key_len) }
    }
    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as for the key.
        unsafe { bytes(self.0.payload, self.0.len) }
    }
    fn timestamp_millis(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; librdkafka only reads it.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.0, &mut kind) };
        match kind {
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => None,
            _ => Some(ts),
        }
    }
    fn header(&self, name: &CStr) -> Option<&[u8]> {
        let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: the headers belong to the live message; the value found
        // points into them.
        unsafe {
            if rdsys::rd_kafka_message_headers(self.0, &mut headers)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            if rdsys::rd_kafka_header_get(headers, 0, name.as_ptr(), &mut value, &mut size)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            bytes(value, size)
        }
    }
}
