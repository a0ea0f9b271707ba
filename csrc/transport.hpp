// Helix data-plane transport: plain C++17 on libzmq (no Python here; csrc/bindings.cpp wraps it).
//
// Socket pattern: every Endpoint binds ONE ROUTER (receives from anyone; replies only with
// heartbeats) and keeps ONE DEALER per named peer (sends; routing id = own name). So
// "send to a named peer" = write on that peer's DEALER, "receive from any" = read the ROUTER,
// whose first frame names the sender. Heartbeats flow both ways on the same TCP connection:
// DEALER -> ROUTER (the receiver learns the sender is alive) and ROUTER -> DEALER (the sender
// learns the receiver is alive). The ROUTER -> DEALER direction carries nothing but heartbeats,
// so a receiver that is busy (or back-pressuring) still proves it is alive to its senders.
//
// Wire format of one message (zmq multipart): [first][payload 0]...[payload n-1]
//   first = 16-byte preamble | n x u64 payload sizes | header bytes (opaque here, msgspec in Python)
//   preamble (little endian): "HX" | u8 wire version | u8 kind | u32 n_payloads | u32 header_len | u32 flags(0)
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace helix {

constexpr uint8_t kWireVersion = 1;
constexpr size_t kPreambleBytes = 16;
enum class Kind : uint8_t { Data = 0, Ping = 1, Bye = 2 };

// ---- errors (bindings map them to vllm_helix.errors) ----
struct TransportError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct PeerLostError : TransportError {
    std::string peer;
    PeerLostError(std::string peer_, const std::string& why)
        : TransportError("peer '" + peer_ + "' lost: " + why), peer(std::move(peer_)) {}
};
struct FrameError : TransportError {
    std::string peer;
    FrameError(std::string peer_, const std::string& why)
        : TransportError(why + (peer_.empty() ? "" : " (from '" + peer_ + "')")), peer(std::move(peer_)) {}
};
struct ClosedError : TransportError {
    ClosedError() : TransportError("endpoint is closed") {}
};

// ---- framing (pure functions; fuzzed from Python through bindings) ----
struct Limits {
    size_t max_header_bytes = 64 * 1024;
    size_t max_payload_bytes = size_t(1) << 30;
    size_t max_payloads = 64;
};

struct ParsedFirst {
    Kind kind;
    uint32_t n_payloads;
    const uint8_t* header;
    size_t header_len;
    std::vector<uint64_t> sizes;
};

// Parse and validate the first frame; throws FrameError (peer left empty).
ParsedFirst parse_first(const uint8_t* data, size_t len, const Limits& lim);
// Check that the payload frames that followed match the declared sizes; throws FrameError.
void check_payloads(const ParsedFirst& first, const std::vector<size_t>& frame_sizes);
// Build a first frame (used by Endpoint::send and by tests).
std::string encode_first(Kind kind, const std::vector<uint64_t>& sizes, const void* header, size_t header_len);

// ---- endpoint ----
struct Options {
    double heartbeat_s = 0.5;       // heartbeat interval
    double peer_timeout_s = 3.0;    // silence after which a peer is reported lost
    double linger_s = 1.0;          // how long close() may wait to flush queued messages
    size_t send_queue_msgs = 1024;  // per peer: messages libzmq may queue (SNDHWM) before send() blocks
    size_t send_queue_bytes = size_t(256) << 20;  // per peer: zero-copy bytes in flight before send() blocks
    size_t recv_queue_msgs = 4096;  // before the I/O thread stops reading (back-pressure to senders)
    size_t recv_queue_bytes = size_t(256) << 20;
    int zmq_hwm_msgs = 1000;        // libzmq's receive queue per sender (RCVHWM, messages)
    size_t copy_below = 64 * 1024;  // payloads smaller than this are copied (cheaper than tracking)
    Limits limits;
    std::string curve_public;       // Z85 (40 chars); all three empty = plain TCP
    std::string curve_secret;
    std::vector<std::string> curve_allow;  // Z85 public keys of peers allowed to send to us
};

// A payload to send: borrowed memory plus an opaque token handed back (take_released) once
// libzmq no longer needs the memory.
struct SendBuf {
    const void* data;
    size_t size;
    void* token;
};

// A received message. Payload memory stays valid as long as this object lives.
class Received {
  public:
    ~Received();
    Received() = default;
    Received(const Received&) = delete;
    Received& operator=(const Received&) = delete;
    std::string sender;
    std::string header;
    double received_at = 0;  // wall clock (s since the epoch) when the I/O thread took it off the socket
    size_t n_payloads() const { return frames_.size(); }
    void* payload_data(size_t i) const;
    size_t payload_size(size_t i) const;
    std::vector<void*> frames_;  // zmq_msg_t*, owned
};

struct Stats {
    uint64_t sent = 0, received = 0, rejected = 0, auth_denied = 0, heartbeats_sent = 0,
             heartbeats_received = 0, peers_lost = 0;
};

class Endpoint {
  public:
    // release_token is called (only from drain_released() and the destructor) for each SendBuf token.
    Endpoint(std::string name, const std::string& bind, Options opts, std::function<void(void*)> release_token);
    ~Endpoint();
    Endpoint(const Endpoint&) = delete;
    Endpoint& operator=(const Endpoint&) = delete;

    const std::string& name() const;
    const std::string& address() const;  // resolved bind address (tcp://host:port)
    void connect(const std::string& peer, const std::string& address, const std::string& server_key);
    // A connected peer's new CURVE public key (its key was rotated): reconnect, proving the new key.
    void rekey(const std::string& peer, const std::string& server_key);
    // Replace the socket to `peer` with a fresh one, for a peer known alive by other means (its Hello)
    // while this link still says lost; the new link gets a full peer timeout to prove itself.
    void redial(const std::string& peer);
    // Hand a message for `peer` to libzmq, waiting up to timeout_s while the peer's queue is full.
    // Returns false on timeout (nothing sent; tokens still released).
    // Throws PeerLostError, ClosedError, std::invalid_argument.
    bool send(const std::string& peer, const void* header, size_t header_len, const std::vector<SendBuf>& payloads,
              double timeout_s);
    // Next message, or nullptr on timeout (0: only looks, never waits). Throws FrameError / PeerLostError for
    // queued events.
    std::shared_ptr<Received> recv(double timeout_s);
    // Up to max_n queued messages in one call (waits like recv for the first). Stops before an
    // error/loss event, which the next call raises; empty on timeout.
    std::vector<std::shared_ptr<Received>> recv_many(size_t max_n, double timeout_s);
    void drain_released();  // call release_token on every token libzmq has let go of
    std::map<std::string, std::string> peers() const;  // name -> "connecting" | "alive" | "lost"
    // Replace the CURVE allow-list (Z85 keys); connections made from now on are checked against it.
    void set_allowed(const std::vector<std::string>& keys);
    // Peers refused at the CURVE handshake since the last call, each address once: (address, Z85 key).
    std::vector<std::pair<std::string, std::string>> take_denied();
    Stats stats() const;
    void close();

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

std::pair<std::string, std::string> curve_keypair();  // (public, secret), Z85
std::string curve_public(const std::string& secret);  // the public key of a Z85 secret key
bool has_curve();

}  // namespace helix
