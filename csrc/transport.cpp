// Helix data-plane transport on libzmq. See transport.hpp for the socket pattern and wire format.
//
// Threads: the caller's thread writes a message straight into its peer's DEALER (under that
// peer's mutex smu: the one hand-over between threads, a full memory barrier as libzmq asks);
// ONE I/O thread per Endpoint reads the ROUTER into the bounded receive queue, answers ZAP, and
// on every heartbeat tick takes each smu briefly to read and send heartbeats. No hop through a
// queue on the send path: a send costs one libzmq call per frame, like pyzmq, but for the
// whole multipart message in one Python call. Lock order: smu before mu.
#include "transport.hpp"

#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

namespace helix {
namespace {

double now_s() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

double wall_s() {  // comparable with Python's time.time() in other processes (hot-path tracing)
    using namespace std::chrono;
    return duration<double>(system_clock::now().time_since_epoch()).count();
}

void put_u32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
    for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}
uint64_t get_u64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

[[noreturn]] void zmq_fail(const std::string& what) {
    throw TransportError(what + ": " + zmq_strerror(zmq_errno()));
}

void set_int(void* sock, int opt, int v) {
    if (zmq_setsockopt(sock, opt, &v, sizeof v) != 0) zmq_fail("zmq_setsockopt");
}

std::string z85_decode_key(const std::string& z85, const char* what) {
    uint8_t raw[32];
    if (z85.size() != 40 || zmq_z85_decode(raw, z85.c_str()) == nullptr)
        throw std::invalid_argument(std::string(what) + ": expected a 40-character Z85 CURVE key");
    return std::string(reinterpret_cast<char*>(raw), 32);
}

// A message waiting to be handed to libzmq. Frames are built in the caller's thread.
struct Outgoing {
    std::vector<zmq_msg_t> frames;
    size_t bytes = 0;
    size_t next = 0;  // first frame not yet accepted by libzmq
    explicit Outgoing(size_t n) : frames(n) {}
    ~Outgoing() {
        for (auto& f : frames) zmq_msg_close(&f);  // no-op for frames libzmq already took
    }
};

// Returns false when libzmq would block (HWM reached); resumes at o.next later.
bool send_frames(void* sock, Outgoing& o) {
    const size_t n = o.frames.size();
    for (; o.next < n; ++o.next) {
        int flags = ZMQ_DONTWAIT | (o.next + 1 < n ? ZMQ_SNDMORE : 0);
        if (zmq_msg_send(&o.frames[o.next], sock, flags) < 0) {
            if (zmq_errno() == EAGAIN) return false;
            o.next = n;  // ETERM or a dead pipe: the message is dropped
            return true;
        }
    }
    return true;
}

enum class PeerState { Connecting, Alive, Lost };
const char* state_name(PeerState s) {
    return s == PeerState::Alive ? "alive" : s == PeerState::Lost ? "lost" : "connecting";
}

struct PeerOut {
    std::string name, address;
    std::mutex smu;                           // guards sock, partial, generation and server_key
    void* sock = nullptr;                     // nullptr once closed
    bool partial = false;                     // a multipart message is half written: no heartbeat now
    uint64_t generation = 0;                  // bumped when sock is replaced: a half-sent message is lost
    std::string server_key;                   // Z85 CURVE key the peer must prove; empty without CURVE
    double redial_at = 0;                     // guarded by mu: when a lost peer gets a fresh socket next
    std::atomic<bool> io_waiting{false};      // the I/O thread waits for smu: a sender lets it in
    std::atomic<size_t> inflight{0};          // zero-copy payload bytes libzmq still holds
    PeerState state = PeerState::Connecting;  // guarded by mu
    std::string lost_why;                     // guarded by mu
    double last_heard = 0;                    // guarded by mu
};

struct Item {  // one entry of the receive queue
    enum Type { Message, BadFrame, Lost } type;
    std::shared_ptr<Received> msg;
    std::string peer, why;
    size_t bytes = 0;
};

}  // namespace

// ---------------------------------------------------------------- framing
ParsedFirst parse_first(const uint8_t* d, size_t len, const Limits& lim) {
    if (len < kPreambleBytes) throw FrameError("", "truncated frame: " + std::to_string(len) + " bytes < 16-byte preamble");
    if (d[0] != 'H' || d[1] != 'X') throw FrameError("", "malformed frame: bad magic");
    if (d[2] != kWireVersion)
        throw FrameError("", "wrong wire version " + std::to_string(d[2]) + " (expected " + std::to_string(kWireVersion) + ")");
    if (d[3] > uint8_t(Kind::Bye)) throw FrameError("", "malformed frame: unknown kind " + std::to_string(d[3]));
    ParsedFirst p;
    p.kind = Kind(d[3]);
    p.n_payloads = get_u32(d + 4);
    p.header_len = get_u32(d + 8);
    if (get_u32(d + 12) != 0) throw FrameError("", "malformed frame: unknown flags");
    if (p.n_payloads > lim.max_payloads)
        throw FrameError("", "oversized message: " + std::to_string(p.n_payloads) + " payloads > limit " +
                                 std::to_string(lim.max_payloads));
    if (p.header_len > lim.max_header_bytes)
        throw FrameError("", "oversized header: " + std::to_string(p.header_len) + " bytes > limit " +
                                 std::to_string(lim.max_header_bytes));
    const size_t want = kPreambleBytes + 8 * size_t(p.n_payloads) + p.header_len;
    if (len != want)
        throw FrameError("", (len < want ? "truncated" : "malformed") + std::string(" first frame: ") +
                                 std::to_string(len) + " bytes, header declares " + std::to_string(want));
    p.sizes.resize(p.n_payloads);
    for (uint32_t i = 0; i < p.n_payloads; ++i) {
        p.sizes[i] = get_u64(d + kPreambleBytes + 8 * i);
        if (p.sizes[i] > lim.max_payload_bytes)
            throw FrameError("", "oversized payload " + std::to_string(i) + ": " + std::to_string(p.sizes[i]) +
                                     " bytes > limit " + std::to_string(lim.max_payload_bytes));
    }
    p.header = d + kPreambleBytes + 8 * size_t(p.n_payloads);
    return p;
}

void check_payloads(const ParsedFirst& first, const std::vector<size_t>& sizes) {
    if (sizes.size() != first.n_payloads)
        throw FrameError("", (sizes.size() < first.n_payloads ? "truncated" : "malformed") +
                                 std::string(" message: ") + std::to_string(sizes.size()) + " payload frames, header declares " +
                                 std::to_string(first.n_payloads));
    for (size_t i = 0; i < sizes.size(); ++i)
        if (sizes[i] != first.sizes[i])
            throw FrameError("", (sizes[i] < first.sizes[i] ? "truncated" : "oversized") + std::string(" payload ") +
                                     std::to_string(i) + ": " + std::to_string(sizes[i]) + " bytes, header declares " +
                                     std::to_string(first.sizes[i]));
}

namespace {
void fill_first(uint8_t* d, Kind kind, const std::vector<uint64_t>& sizes, const void* header, size_t header_len);
size_t write_first(zmq_msg_t* m, Kind kind, const std::vector<uint64_t>& sizes, const void* header, size_t header_len) {
    const size_t n = kPreambleBytes + 8 * sizes.size() + header_len;
    zmq_msg_init_size(m, n);
    fill_first(static_cast<uint8_t*>(zmq_msg_data(m)), kind, sizes, header, header_len);
    return n;
}
}  // namespace

std::string encode_first(Kind kind, const std::vector<uint64_t>& sizes, const void* header, size_t header_len) {
    std::string out(kPreambleBytes + 8 * sizes.size() + header_len, '\0');
    fill_first(reinterpret_cast<uint8_t*>(out.data()), kind, sizes, header, header_len);
    return out;
}

namespace {
void fill_first(uint8_t* d, Kind kind, const std::vector<uint64_t>& sizes, const void* header, size_t header_len) {
    d[0] = 'H';
    d[1] = 'X';
    d[2] = kWireVersion;
    d[3] = uint8_t(kind);
    put_u32(d + 4, uint32_t(sizes.size()));
    put_u32(d + 8, uint32_t(header_len));
    put_u32(d + 12, 0);  // flags
    for (size_t i = 0; i < sizes.size(); ++i) put_u64(d + kPreambleBytes + 8 * i, sizes[i]);
    if (header_len) std::memcpy(d + kPreambleBytes + 8 * sizes.size(), header, header_len);
}
}  // namespace

// ---------------------------------------------------------------- received message
Received::~Received() {
    for (void* f : frames_) {
        zmq_msg_close(static_cast<zmq_msg_t*>(f));
        delete static_cast<zmq_msg_t*>(f);
    }
}
void* Received::payload_data(size_t i) const { return zmq_msg_data(static_cast<zmq_msg_t*>(frames_.at(i))); }
size_t Received::payload_size(size_t i) const { return zmq_msg_size(static_cast<zmq_msg_t*>(frames_.at(i))); }

// ---------------------------------------------------------------- endpoint internals
struct Endpoint::Impl {
    std::string name, address;
    Options opt;
    std::function<void(void*)> release_token;
    void* ctx = nullptr;
    void* router = nullptr;
    void* zap = nullptr;
    int wake_fd = -1;
    std::string curve_server_key;  // raw 32 bytes of allowed keys below
    std::set<std::string> allowed;                    // guarded by mu (ZAP runs on the I/O thread)
    std::set<std::string> denied_seen;                // addresses refused so far (bounded)
    std::vector<std::pair<std::string, std::string>> denied_new;  // not yet taken by take_denied()

    std::mutex mu;
    std::condition_variable cv_send, cv_recv;
    std::atomic<int> send_waiters{0};
    int recv_waiters = 0;
    std::atomic<uint64_t> sent{0};
    std::map<std::string, std::unique_ptr<PeerOut>> peers;
    std::deque<Item> rq;
    size_t rq_bytes = 0;
    Stats st;
    bool closed = false;

    std::mutex rel_mu;
    std::vector<void*> released;

    std::atomic<bool> stop{false}, signaled{false};
    std::thread io;
    std::mutex close_mu;
    bool terminated = false;

    // I/O thread only
    std::map<std::string, double> senders;  // routing id -> last heard
    std::set<std::string> reported_lost;  // guarded by mu
    bool reading_paused = false;
    std::string ping = encode_first(Kind::Ping, {}, nullptr, 0);
    std::string bye = encode_first(Kind::Bye, {}, nullptr, 0);

    struct Hint {
        Impl* impl;
        PeerOut* peer;
        void* token;
        size_t size;
    };
    static void free_fn(void*, void* hint) {  // libzmq is done with a zero-copy payload
        auto* h = static_cast<Hint*>(hint);
        h->impl->give_back(h->token);
        h->peer->inflight.fetch_sub(h->size);
        if (h->impl->send_waiters.load()) {
            std::lock_guard<std::mutex> g(h->impl->mu);
            h->impl->cv_send.notify_all();
        }
        delete h;
    }
    void give_back(void* token) {
        if (!token) return;
        std::lock_guard<std::mutex> g(rel_mu);
        released.push_back(token);
    }
    void signal() {
        if (!signaled.exchange(true)) {
            uint64_t one = 1;
            (void)!write(wake_fd, &one, sizeof one);
        }
    }
    bool rq_has_room() const { return rq.size() < opt.recv_queue_msgs && rq_bytes < opt.recv_queue_bytes; }
    void push_event(Item it) {  // caller holds mu; events bypass the bound (at most one per peer)
        rq.push_back(std::move(it));
        if (recv_waiters) cv_recv.notify_one();
    }

    void setup(const std::string& bind);
    void run();
    void read_router();
    void read_dealer(PeerOut* p, double now);
    void drop_rest(bool more);  // the router's frames left of a message nobody will read
    void serve_zap();
    void heartbeat(double now);
    void peer_lost(PeerOut* p, const std::string& why);  // caller holds mu
    void* dial(const std::string& address, const std::string& server_key);
    bool redial(PeerOut* p);  // caller holds p->smu
    // smu for the I/O thread: a sender waiting on a full queue steps aside, so heartbeats never starve
    static std::unique_lock<std::mutex> io_lock(PeerOut* p) {
        p->io_waiting.store(true);
        std::unique_lock<std::mutex> l(p->smu);
        p->io_waiting.store(false);
        return l;
    }
    PeerOut* find_peer(const std::string& peer);  // throws std::invalid_argument
    void shutdown_io();
};

void Endpoint::Impl::setup(const std::string& bind) {
    const bool curve = !opt.curve_secret.empty() || !opt.curve_public.empty();
    if (curve) {
        z85_decode_key(opt.curve_public, "curve_public");
        z85_decode_key(opt.curve_secret, "curve_secret");
        for (auto& k : opt.curve_allow) allowed.insert(z85_decode_key(k, "allowed peer key"));
    } else if (!opt.curve_allow.empty()) {
        throw std::invalid_argument("an allow-list of peer keys needs CURVE keys for this endpoint");
    }
    ctx = zmq_ctx_new();
    if (!ctx) zmq_fail("zmq_ctx_new");
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd < 0) throw TransportError("eventfd failed");
    if (curve) {  // ZAP handler: libzmq asks it to approve each client's public key
        zap = zmq_socket(ctx, ZMQ_REP);
        set_int(zap, ZMQ_LINGER, 0);
        if (zmq_bind(zap, "inproc://zeromq.zap.01") != 0) zmq_fail("bind ZAP handler");
    }
    router = zmq_socket(ctx, ZMQ_ROUTER);
    set_int(router, ZMQ_ROUTER_HANDOVER, 1);   // a reconnecting peer takes over its old routing id
    set_int(router, ZMQ_ROUTER_MANDATORY, 1);  // heartbeats to vanished peers fail instead of vanishing
    set_int(router, ZMQ_RCVHWM, opt.zmq_hwm_msgs);
    set_int(router, ZMQ_SNDHWM, opt.zmq_hwm_msgs);
    set_int(router, ZMQ_LINGER, 0);
    const size_t frame_max = std::max(opt.limits.max_payload_bytes,
                                      kPreambleBytes + 8 * opt.limits.max_payloads + opt.limits.max_header_bytes);
    // Frames up to 2x the limit arrive and are rejected per message; beyond that libzmq drops the
    // connection before allocating (protects memory from a hostile length field).
    int64_t maxmsg = frame_max > size_t(std::numeric_limits<int64_t>::max() / 2) ? -1 : int64_t(2 * frame_max);
    if (zmq_setsockopt(router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) zmq_fail("ZMQ_MAXMSGSIZE");
    if (curve) {
        set_int(router, ZMQ_CURVE_SERVER, 1);
        if (zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, opt.curve_secret.c_str(), 40) != 0) zmq_fail("CURVE key");
        if (zmq_setsockopt(router, ZMQ_ZAP_DOMAIN, "helix", 5) != 0) zmq_fail("ZAP domain");
    }
    if (zmq_bind(router, bind.c_str()) != 0) zmq_fail("bind " + bind);
    char buf[256];
    size_t n = sizeof buf;
    if (zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, buf, &n) != 0) zmq_fail("ZMQ_LAST_ENDPOINT");
    address.assign(buf, strnlen(buf, n));
}

void Endpoint::Impl::run() {
    double next_hb = now_s();
    while (!stop.load()) {
        signaled.store(false);
        uint64_t drained;
        (void)!read(wake_fd, &drained, sizeof drained);
        bool can_read;
        {
            std::lock_guard<std::mutex> g(mu);
            can_read = rq_has_room();
        }
        if (!can_read) reading_paused = true;
        else if (reading_paused) {  // we were not reading: silence from senders meant nothing
            reading_paused = false;
            const double t = now_s();
            for (auto& kv : senders) kv.second = std::max(kv.second, t);
        }
        zmq_pollitem_t items[3] = {{nullptr, wake_fd, ZMQ_POLLIN, 0},
                                   {router, 0, short(can_read ? ZMQ_POLLIN : 0), 0},
                                   {zap, 0, short(zap ? ZMQ_POLLIN : 0), 0}};
        const long wait_ms = std::max(0L, long((next_hb - now_s()) * 1000.0) + 1);
        if (zmq_poll(items, 3, wait_ms) < 0) {
            if (zmq_errno() == ETERM) break;
            continue;  // EINTR
        }
        if (items[1].revents & ZMQ_POLLIN) read_router();
        if (items[2].revents & ZMQ_POLLIN) serve_zap();
        const double t = now_s();
        if (t >= next_hb) {
            heartbeat(t);
            next_hb = t + opt.heartbeat_s;
        }
    }
    shutdown_io();
}

void Endpoint::Impl::read_router() {
    for (int budget = 256; budget > 0; --budget) {
        {
            std::lock_guard<std::mutex> g(mu);
            if (!rq_has_room()) return;
        }
        zmq_msg_t id;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            return;
        }
        std::string sender(static_cast<char*>(zmq_msg_data(&id)), zmq_msg_size(&id));
        bool more = zmq_msg_more(&id);
        zmq_msg_close(&id);
        if (sender.empty() || sender[0] == '\0') {
            // An id libzmq made up: a connection whose peer dialled us again on a fresh socket (the
            // handover renamed the stale one), or a socket that never named itself. Not a peer of ours.
            drop_rest(more);
            std::lock_guard<std::mutex> g(mu);
            ++st.rejected;
            continue;
        }
        auto rec = std::make_shared<Received>();
        size_t n_frames = 0, bytes = 0;
        zmq_msg_t first;
        zmq_msg_init(&first);
        while (more) {  // a multipart message arrives whole: these reads never block
            auto* m = new zmq_msg_t;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, router, 0) < 0) {
                delete m;
                break;
            }
            more = zmq_msg_more(m);
            bytes += zmq_msg_size(m);
            if (n_frames++ == 0) {
                zmq_msg_move(&first, m);
                zmq_msg_close(m);
                delete m;
            } else if (rec->frames_.size() <= opt.limits.max_payloads) {
                rec->frames_.push_back(m);
            } else {  // too many frames: drain and drop
                zmq_msg_close(m);
                delete m;
            }
        }
        const double t = now_s();
        Item it{Item::Message, nullptr, sender, "", bytes};
        try {
            if (n_frames == 0) throw FrameError("", "malformed message: no frames");
            auto p = parse_first(static_cast<uint8_t*>(zmq_msg_data(&first)), zmq_msg_size(&first), opt.limits);
            auto [pos, is_new] = senders.insert_or_assign(sender, t);
            if (is_new && p.kind != Kind::Bye)  // greet at once: the sender learns we are alive without waiting a tick
                if (zmq_send(router, sender.data(), sender.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
                    zmq_send(router, ping.data(), ping.size(), ZMQ_DONTWAIT);
            reported_lost.erase(sender);
            if (p.kind == Kind::Ping) {
                std::lock_guard<std::mutex> g(mu);
                ++st.heartbeats_received;
            } else if (p.kind == Kind::Bye) {
                senders.erase(sender);  // left cleanly: no loss to report
            } else {
                std::vector<size_t> sizes(n_frames - 1);
                for (size_t i = 0; i < sizes.size(); ++i)
                    sizes[i] = i < rec->frames_.size() ? rec->payload_size(i) : 0;
                check_payloads(p, sizes);
                rec->sender = sender;
                rec->received_at = wall_s();
                rec->header.assign(reinterpret_cast<const char*>(p.header), p.header_len);
                it.msg = std::move(rec);
            }
        } catch (const FrameError& e) {
            it.type = Item::BadFrame;
            it.why = e.what();
        }
        zmq_msg_close(&first);
        if (it.type == Item::Message && !it.msg) continue;  // heartbeat or bye
        std::lock_guard<std::mutex> g(mu);
        if (it.type == Item::BadFrame) ++st.rejected;
        else ++st.received;
        rq_bytes += it.bytes;
        rq.push_back(std::move(it));
        if (recv_waiters) cv_recv.notify_one();
    }
}

void Endpoint::Impl::drop_rest(bool more) {
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, router, 0) < 0) more = false;
        else more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
}

void Endpoint::Impl::read_dealer(PeerOut* p, double now) {  // caller holds p->smu
    for (int budget = 64; budget > 0; --budget) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        bool more = zmq_msg_more(&m);
        Kind kind = Kind::Data;
        bool ok = true;
        try {
            kind = parse_first(static_cast<uint8_t*>(zmq_msg_data(&m)), zmq_msg_size(&m), opt.limits).kind;
        } catch (const FrameError&) {
            ok = false;
        }
        zmq_msg_close(&m);
        while (more) {  // only heartbeats travel this way; drop anything else
            zmq_msg_init(&m);
            zmq_msg_recv(&m, p->sock, 0);
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
            ok = false;
        }
        std::lock_guard<std::mutex> g(mu);
        if (!ok || kind == Kind::Data) {
            ++st.rejected;
            continue;
        }
        if (kind == Kind::Bye) {
            peer_lost(p, "peer closed its endpoint");
            continue;
        }
        ++st.heartbeats_received;
        p->last_heard = now;
        if (p->state != PeerState::Alive) {
            p->state = PeerState::Alive;
            p->redial_at = 0;  // lost again: a fresh socket at once
            reported_lost.erase(p->name);
        }
    }
}

void Endpoint::Impl::peer_lost(PeerOut* p, const std::string& why) {
    if (p->state == PeerState::Lost) return;
    p->state = PeerState::Lost;
    p->lost_why = why;
    ++st.peers_lost;
    if (send_waiters) cv_send.notify_all();
    if (reported_lost.insert(p->name).second) push_event({Item::Lost, nullptr, p->name, why, 0});
}

void Endpoint::Impl::serve_zap() {
    std::vector<std::string> parts;
    for (bool more = true; more;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        parts.emplace_back(static_cast<char*>(zmq_msg_data(&m)), zmq_msg_size(&m));
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    // request: version, request id, domain, address, routing id, mechanism, credentials...
    bool ok;
    {
        std::lock_guard<std::mutex> g(mu);
        ok = parts.size() >= 7 && parts[5] == "CURVE" && allowed.count(parts[6]);
        if (!ok) {
            ++st.auth_denied;
            const std::string& from = parts.size() > 3 ? parts[3] : std::string();
            if (denied_seen.size() < 4096 && denied_seen.insert(from).second) {
                char z85[41] = {0};
                if (parts.size() >= 7 && parts[6].size() == 32)
                    zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(parts[6].data()), 32);
                denied_new.emplace_back(from, z85);
            }
        }
    }
    const std::string reply[6] = {"1.0", parts.size() > 1 ? parts[1] : "", ok ? "200" : "400",
                                  ok ? "OK" : "public key not in allow-list", "", ""};
    for (int i = 0; i < 6; ++i) zmq_send(zap, reply[i].data(), reply[i].size(), i < 5 ? ZMQ_SNDMORE : 0);
}

void Endpoint::Impl::heartbeat(double now) {
    std::vector<PeerOut*> outs;
    {
        std::lock_guard<std::mutex> g(mu);
        for (auto& kv : peers) outs.push_back(kv.second.get());
    }
    uint64_t n_sent = 0;
    for (PeerOut* p : outs) {
        std::unique_lock<std::mutex> sg = io_lock(p);
        if (!p->sock) continue;
        read_dealer(p, now);
        if (!p->partial && zmq_send(p->sock, ping.data(), ping.size(), ZMQ_DONTWAIT) >= 0) ++n_sent;
    }
    for (auto& kv : senders)
        if (zmq_send(router, kv.first.data(), kv.first.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
            zmq_send(router, ping.data(), ping.size(), ZMQ_DONTWAIT) >= 0)
            ++n_sent;
    std::vector<PeerOut*> newly_lost;
    {
        std::lock_guard<std::mutex> g(mu);
        st.heartbeats_sent += n_sent;
        const double timeout = opt.peer_timeout_s;
        for (PeerOut* p : outs)
            if (p->state != PeerState::Lost && now - p->last_heard > timeout) {
                peer_lost(p, "no heartbeat for " + std::to_string(timeout) + " s");
                newly_lost.push_back(p);
            }
        for (auto it = senders.begin(); it != senders.end();) {
            if (!reading_paused && now - it->second > timeout) {
                auto peer = peers.find(it->first);  // same name = same node: stop sending to it too
                if (peer != peers.end() && peer->second->state != PeerState::Lost) {
                    peer_lost(peer->second.get(), "sender silent for " + std::to_string(timeout) + " s");
                    newly_lost.push_back(peer->second.get());
                } else if (reported_lost.insert(it->first).second) {
                    ++st.peers_lost;
                    push_event({Item::Lost, nullptr, it->first, "sender silent for " + std::to_string(timeout) + " s", 0});
                }
                it = senders.erase(it);
            } else {
                ++it;
            }
        }
    }
    // A lost peer gets a fresh socket now and again while it stays lost: a cut link leaves TCP in
    // exponential retransmit back-off, and a socket whose reconnect went wrong never heals by itself.
    // Messages libzmq still held for the lost peer are dropped with the old socket.
    std::vector<PeerOut*> redials;
    {
        std::lock_guard<std::mutex> g(mu);
        for (PeerOut* p : outs)
            if (p->state == PeerState::Lost && now >= p->redial_at) {
                p->redial_at = now + opt.peer_timeout_s;
                redials.push_back(p);
            }
    }
    for (PeerOut* p : redials) {
        std::unique_lock<std::mutex> sg = io_lock(p);
        if (p->sock) redial(p);
    }
}

void* Endpoint::Impl::dial(const std::string& address, const std::string& server_key) {
    void* s = zmq_socket(ctx, ZMQ_DEALER);
    if (!s) zmq_fail("zmq_socket");
    try {
        if (zmq_setsockopt(s, ZMQ_ROUTING_ID, name.data(), name.size()) != 0) zmq_fail("ZMQ_ROUTING_ID");
        set_int(s, ZMQ_SNDHWM, int(std::min<size_t>(opt.send_queue_msgs, 1 << 30)));
        set_int(s, ZMQ_RCVHWM, opt.zmq_hwm_msgs);
        set_int(s, ZMQ_RECONNECT_IVL, 100);
        set_int(s, ZMQ_RECONNECT_IVL_MAX, 1000);
        set_int(s, ZMQ_LINGER, 0);
        int64_t maxmsg = 4096;  // only heartbeats come back on this socket
        if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) zmq_fail("ZMQ_MAXMSGSIZE");
        if (!server_key.empty()) {
            if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_key.c_str(), 40) != 0 ||
                zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, opt.curve_public.c_str(), 40) != 0 ||
                zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, opt.curve_secret.c_str(), 40) != 0)
                zmq_fail("CURVE keys");
        }
        if (zmq_connect(s, address.c_str()) != 0) zmq_fail("connect " + address);
    } catch (...) {
        zmq_close(s);
        throw;
    }
    return s;
}

bool Endpoint::Impl::redial(PeerOut* p) {
    void* fresh;
    try {
        fresh = dial(p->address, p->server_key);
    } catch (const TransportError&) {
        return false;  // e.g. the context is shutting down: keep the old socket
    }
    zmq_close(p->sock);  // linger 0: what it still queued is dropped
    p->sock = fresh;
    p->partial = false;
    ++p->generation;
    return true;
}

void Endpoint::Impl::shutdown_io() {
    std::vector<PeerOut*> outs;
    {
        std::lock_guard<std::mutex> g(mu);
        for (auto& kv : peers) outs.push_back(kv.second.get());
    }
    // Messages already handed to libzmq get linger_s to leave; lost peers get none.
    const int linger_ms = int(opt.linger_s * 1000);
    for (PeerOut* p : outs) {
        std::lock_guard<std::mutex> sg(p->smu);
        bool lost;
        {
            std::lock_guard<std::mutex> g(mu);
            lost = p->state == PeerState::Lost;
        }
        if (!lost && !p->partial) zmq_send(p->sock, bye.data(), bye.size(), ZMQ_DONTWAIT);
        set_int(p->sock, ZMQ_LINGER, lost ? 0 : linger_ms);
        zmq_close(p->sock);
        p->sock = nullptr;
    }
    for (auto& kv : senders)
        if (zmq_send(router, kv.first.data(), kv.first.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
            zmq_send(router, bye.data(), bye.size(), ZMQ_DONTWAIT);
    set_int(router, ZMQ_LINGER, std::min(linger_ms, 200));
    zmq_close(router);
    if (zap) zmq_close(zap);
}

// ---------------------------------------------------------------- public API
Endpoint::Endpoint(std::string name, const std::string& bind, Options opts, std::function<void(void*)> release_token)
    : impl_(new Impl) {
    if (name.empty() || name.size() > 255 || name[0] == '\0')
        throw std::invalid_argument("endpoint name must be 1-255 bytes and not start with a NUL byte");
    if (!(opts.heartbeat_s > 0) || !(opts.peer_timeout_s > opts.heartbeat_s) || opts.linger_s < 0)
        throw std::invalid_argument("need heartbeat_s > 0, peer_timeout_s > heartbeat_s, linger_s >= 0");
    if (opts.send_queue_msgs == 0 || opts.recv_queue_msgs == 0 || opts.zmq_hwm_msgs <= 0)
        throw std::invalid_argument("queue bounds must be positive");
    impl_->name = std::move(name);
    impl_->opt = std::move(opts);
    impl_->release_token = std::move(release_token);
    try {
        impl_->setup(bind);
    } catch (...) {
        if (impl_->router) zmq_close(impl_->router);
        if (impl_->zap) zmq_close(impl_->zap);
        if (impl_->ctx) zmq_ctx_term(impl_->ctx);
        if (impl_->wake_fd >= 0) ::close(impl_->wake_fd);
        impl_->terminated = true;
        throw;
    }
    impl_->io = std::thread([this] { impl_->run(); });
}

Endpoint::~Endpoint() {
    close();
    drain_released();
}

const std::string& Endpoint::name() const { return impl_->name; }
const std::string& Endpoint::address() const { return impl_->address; }

void Endpoint::connect(const std::string& peer, const std::string& address, const std::string& server_key) {
    Impl& I = *impl_;
    const bool curve = !I.opt.curve_secret.empty();
    if (peer.empty() || peer.size() > 255) throw std::invalid_argument("peer name must be 1-255 bytes");
    if (curve && server_key.empty())
        throw std::invalid_argument("CURVE is on: connect('" + peer + "', ...) needs the peer's public key");
    if (!curve && !server_key.empty())
        throw std::invalid_argument("a peer public key was given but this endpoint has no CURVE keys");
    if (curve) z85_decode_key(server_key, "peer public key");
    {
        std::lock_guard<std::mutex> g(I.mu);
        if (I.closed) throw ClosedError();
        if (I.peers.count(peer)) throw std::invalid_argument("peer '" + peer + "' is already connected");
    }
    void* s = I.dial(address, curve ? server_key : std::string());
    auto p = std::make_unique<PeerOut>();
    p->name = peer;
    p->address = address;
    p->server_key = curve ? server_key : std::string();
    p->sock = s;
    p->last_heard = now_s();
    {
        std::lock_guard<std::mutex> g(I.mu);
        I.peers[peer] = std::move(p);
    }
    I.signal();
}

bool Endpoint::send(const std::string& peer, const void* header, size_t header_len, const std::vector<SendBuf>& payloads,
                    double timeout_s) {
    Impl& I = *impl_;
    PeerOut* p = nullptr;
    try {
        std::lock_guard<std::mutex> g(I.mu);
        if (I.closed) throw ClosedError();
        auto it = I.peers.find(peer);
        if (it == I.peers.end()) throw std::invalid_argument("unknown peer '" + peer + "': call connect(name, address) first");
        p = it->second.get();
        if (p->state == PeerState::Lost) throw PeerLostError(peer, p->lost_why);
        const Limits& lim = I.opt.limits;
        if (header_len > lim.max_header_bytes)
            throw std::invalid_argument("header of " + std::to_string(header_len) + " bytes exceeds max_header_bytes");
        if (payloads.size() > lim.max_payloads)
            throw std::invalid_argument(std::to_string(payloads.size()) + " payloads exceed max_payloads");
        for (auto& b : payloads)
            if (b.size > lim.max_payload_bytes)
                throw std::invalid_argument("payload of " + std::to_string(b.size) + " bytes exceeds max_payload_bytes");
    } catch (...) {
        for (auto& b : payloads) I.give_back(b.token);
        throw;
    }
    std::vector<uint64_t> sizes(payloads.size());
    for (size_t i = 0; i < payloads.size(); ++i) sizes[i] = payloads[i].size;
    Outgoing out(1 + payloads.size());  // destroyed last, no lock held: unsent payloads go back via free_fn
    write_first(&out.frames[0], Kind::Data, sizes, header, header_len);
    size_t mine = 0;  // zero-copy bytes of this message
    for (size_t i = 0; i < payloads.size(); ++i) {
        const SendBuf& b = payloads[i];
        zmq_msg_t* f = &out.frames[1 + i];
        if (b.size < I.opt.copy_below) {
            zmq_msg_init_size(f, b.size);
            if (b.size) std::memcpy(zmq_msg_data(f), b.data, b.size);
            I.give_back(b.token);
        } else {
            p->inflight.fetch_add(b.size);
            mine += b.size;
            zmq_msg_init_data(f, const_cast<void*>(b.data), b.size, &Impl::free_fn,
                              new Impl::Hint{&I, p, b.token, b.size});
        }
    }
    const double deadline = now_s() + std::max(0.0, timeout_s);
    std::unique_lock<std::mutex> sl(p->smu);
    const uint64_t generation = p->generation;
    for (;;) {
        if (!p->sock) throw ClosedError();
        if (p->generation != generation)  // the socket was replaced under a message in the making
            throw PeerLostError(peer, "the link was dialled again while this message was being sent");
        {
            std::lock_guard<std::mutex> g(I.mu);
            if (I.closed) throw ClosedError();
            if (p->state == PeerState::Lost && out.next == 0) throw PeerLostError(peer, p->lost_why);
        }
        const size_t others = p->inflight.load() - mine;  // back-pressure in bytes (zero-copy payloads)
        const bool room = out.next > 0 || others == 0 || others + mine <= I.opt.send_queue_bytes;
        if (room && send_frames(p->sock, out)) {
            p->partial = false;
            I.sent.fetch_add(1);
            return true;
        }
        p->partial = out.next > 0;
        const double left = deadline - now_s();
        if (left <= 0 && out.next == 0) return false;  // nothing sent; tokens come back via free_fn
        const long slice_ms = std::max(1L, std::min(10L, long(left * 1000)));
        if (!room) {  // too many bytes in flight: wait for free_fn to report progress
            sl.unlock();
            {
                std::unique_lock<std::mutex> lk(I.mu);
                I.send_waiters.fetch_add(1);
                I.cv_send.wait_for(lk, std::chrono::milliseconds(slice_ms));
                I.send_waiters.fetch_sub(1);
            }
            sl.lock();
        } else {  // libzmq's queue for this peer is full (send_queue_msgs): wait until it drains
            zmq_pollitem_t it{p->sock, 0, ZMQ_POLLOUT, 0};
            zmq_poll(&it, 1, slice_ms);
            if (!(it.revents & ZMQ_POLLOUT)) {  // let the heartbeat in between slices
                sl.unlock();
                do std::this_thread::yield();
                while (p->io_waiting.load());
                sl.lock();
            }
        }
    }
}

std::shared_ptr<Received> Endpoint::recv(double timeout_s) {
    Impl& I = *impl_;
    std::unique_lock<std::mutex> lk(I.mu);
    if (I.rq.empty()) {
        if (I.closed) throw ClosedError();
        if (timeout_s > 0) {  // a zero timeout only looks: a timed wait costs a timer (50-100 us with the slack)
            ++I.recv_waiters;
            I.cv_recv.wait_for(lk, std::chrono::duration<double>(timeout_s),
                               [&] { return !I.rq.empty() || I.closed; });
            --I.recv_waiters;
        }
        if (I.rq.empty()) {
            if (I.closed) throw ClosedError();
            return nullptr;
        }
    }
    const bool was_full = !I.rq_has_room();
    Item it = std::move(I.rq.front());
    I.rq.pop_front();
    I.rq_bytes -= it.bytes;
    lk.unlock();
    if (was_full) I.signal();
    if (it.type == Item::BadFrame) throw FrameError(it.peer, it.why);
    if (it.type == Item::Lost) throw PeerLostError(it.peer, it.why);
    return std::move(it.msg);
}

std::vector<std::shared_ptr<Received>> Endpoint::recv_many(size_t max_n, double timeout_s) {
    std::vector<std::shared_ptr<Received>> out;
    auto first = recv(timeout_s);
    if (!first) return out;
    out.push_back(std::move(first));
    Impl& I = *impl_;
    std::unique_lock<std::mutex> lk(I.mu);
    const bool was_full = !I.rq_has_room();
    while (out.size() < max_n && !I.rq.empty() && I.rq.front().type == Item::Message) {
        I.rq_bytes -= I.rq.front().bytes;
        out.push_back(std::move(I.rq.front().msg));
        I.rq.pop_front();
    }
    lk.unlock();
    if (was_full) I.signal();
    return out;
}

void Endpoint::drain_released() {
    std::vector<void*> toks;
    {
        std::lock_guard<std::mutex> g(impl_->rel_mu);
        toks.swap(impl_->released);
    }
    if (impl_->release_token)
        for (void* t : toks) impl_->release_token(t);
}

std::map<std::string, std::string> Endpoint::peers() const {
    std::lock_guard<std::mutex> g(impl_->mu);
    std::map<std::string, std::string> out;
    for (auto& kv : impl_->peers) out[kv.first] = state_name(kv.second->state);
    return out;
}

Stats Endpoint::stats() const {
    std::lock_guard<std::mutex> g(impl_->mu);
    Stats s = impl_->st;
    s.sent = impl_->sent.load();
    return s;
}

void Endpoint::close() {
    Impl& I = *impl_;
    std::lock_guard<std::mutex> cg(I.close_mu);
    if (I.terminated) return;
    I.stop.store(true);
    I.signal();
    if (I.io.joinable()) I.io.join();
    zmq_ctx_term(I.ctx);  // returns once every socket is closed and its linger is over
    ::close(I.wake_fd);
    I.terminated = true;
    std::lock_guard<std::mutex> g(I.mu);
    I.closed = true;
    I.cv_send.notify_all();
    I.cv_recv.notify_all();
}

PeerOut* Endpoint::Impl::find_peer(const std::string& peer) {
    std::lock_guard<std::mutex> g(mu);
    auto it = peers.find(peer);
    if (it == peers.end()) throw std::invalid_argument("unknown peer '" + peer + "': call connect(name, address) first");
    return it->second.get();
}

void Endpoint::rekey(const std::string& peer, const std::string& server_key) {
    Impl& I = *impl_;
    if (I.opt.curve_secret.empty()) throw std::invalid_argument("rekey needs CURVE keys for this endpoint");
    z85_decode_key(server_key, "peer public key");
    PeerOut* p = I.find_peer(peer);
    // The server key applies to connections made from now on: a fresh socket dials again.
    std::lock_guard<std::mutex> sg(p->smu);
    if (!p->sock) throw ClosedError();
    p->server_key = server_key;
    if (!I.redial(p)) throw ClosedError();
}

void Endpoint::redial(const std::string& peer) {
    Impl& I = *impl_;
    PeerOut* p = I.find_peer(peer);
    std::lock_guard<std::mutex> sg(p->smu);
    if (!p->sock || !I.redial(p)) throw ClosedError();
    std::lock_guard<std::mutex> g(I.mu);
    if (p->state == PeerState::Lost) {  // heard from it another way: give the new link a full timeout
        p->state = PeerState::Connecting;
        p->last_heard = now_s();
        p->redial_at = 0;
        I.reported_lost.erase(p->name);
    }
}

void Endpoint::set_allowed(const std::vector<std::string>& keys) {
    Impl& I = *impl_;
    if (I.opt.curve_secret.empty()) throw std::invalid_argument("an allow-list of peer keys needs CURVE keys for this endpoint");
    std::set<std::string> raw;
    for (auto& k : keys) raw.insert(z85_decode_key(k, "allowed peer key"));
    std::lock_guard<std::mutex> g(I.mu);
    I.allowed = std::move(raw);
}

std::vector<std::pair<std::string, std::string>> Endpoint::take_denied() {
    std::lock_guard<std::mutex> g(impl_->mu);
    return std::exchange(impl_->denied_new, {});
}

std::string curve_public(const std::string& secret) {
    z85_decode_key(secret, "secret key");
    char pub[41];
    if (zmq_curve_public(pub, secret.c_str()) != 0) zmq_fail("zmq_curve_public (libzmq built without CURVE?)");
    return pub;
}

std::pair<std::string, std::string> curve_keypair() {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) zmq_fail("zmq_curve_keypair (libzmq built without CURVE?)");
    return {pub, sec};
}

bool has_curve() { return zmq_has("curve") != 0; }

}  // namespace helix
