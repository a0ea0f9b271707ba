// pybind11 face of transport.{hpp,cpp}: only conversions and .defs. The GIL is released around
// everything that may block; payloads cross without copies through the buffer protocol
// (send: a held Py_buffer, released once libzmq is done; receive: a Payload object that keeps
// the zmq message alive); C++ errors become vllm_helix.errors classes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "transport.hpp"

namespace py = pybind11;
using namespace helix;

namespace {

struct Payload {  // one received payload; exporting it keeps the whole message alive
    std::shared_ptr<Received> msg;
    size_t index;
};

void release_pybuffer(void* token) {  // runs with the GIL held (drain_released / destructor)
    auto* view = static_cast<Py_buffer*>(token);
    PyBuffer_Release(view);
    delete view;
}

py::str lenient_str(const std::string& s) {  // routing ids from foreign sockets may not be UTF-8
    return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "replace"));
}

void raise_helix(const char* cls_name, const char* what, const std::string& peer) {
    py::object cls = py::module_::import("vllm_helix.errors").attr(cls_name);
    py::object exc = cls(lenient_str(what));  // the message may quote a peer's name
    exc.attr("peer") = peer.empty() ? py::object(py::none()) : py::object(lenient_str(peer));
    PyErr_SetObject(cls.ptr(), exc.ptr());
}

bool send(Endpoint& ep, const std::string& peer, const py::bytes& header, const py::sequence& payloads, double timeout_s) {
    ep.drain_released();
    std::vector<SendBuf> bufs;
    bufs.reserve(payloads.size());
    for (py::handle obj : payloads) {
        auto* view = new Py_buffer;
        if (PyObject_GetBuffer(obj.ptr(), view, PyBUF_SIMPLE) != 0) {
            delete view;
            for (auto& b : bufs) release_pybuffer(b.token);
            py::error_already_set cause;
            throw py::value_error("payload " + std::to_string(bufs.size()) +
                                  " is not a C-contiguous buffer (sending never copies): " + cause.what());
        }
        bufs.push_back({view->buf, size_t(view->len), view});
    }
    char* hdr = nullptr;
    Py_ssize_t hlen = 0;
    PyBytes_AsStringAndSize(header.ptr(), &hdr, &hlen);
    py::gil_scoped_release nogil;
    return ep.send(peer, hdr, size_t(hlen), bufs, timeout_s);
}

py::object recv(Endpoint& ep, double timeout_s) {
    ep.drain_released();
    std::shared_ptr<Received> r;
    {
        py::gil_scoped_release nogil;
        r = ep.recv(timeout_s);
    }
    if (!r) return py::none();
    py::list payloads(r->n_payloads());
    for (size_t i = 0; i < r->n_payloads(); ++i) payloads[i] = py::cast(Payload{r, i});
    return py::make_tuple(lenient_str(r->sender), py::bytes(r->header), payloads, r->received_at);
}

py::list recv_many(Endpoint& ep, size_t max_n, double timeout_s) {
    ep.drain_released();
    std::vector<std::shared_ptr<Received>> got;
    {
        py::gil_scoped_release nogil;
        got = ep.recv_many(max_n, timeout_s);
    }
    py::list out(got.size());
    for (size_t k = 0; k < got.size(); ++k) {
        auto& r = got[k];
        py::list payloads(r->n_payloads());
        for (size_t i = 0; i < r->n_payloads(); ++i) payloads[i] = py::cast(Payload{r, i});
        out[k] = py::make_tuple(lenient_str(r->sender), py::bytes(r->header), payloads, r->received_at);
    }
    return out;
}

py::tuple parse_message(const std::vector<py::bytes>& frames, const Limits& lim) {
    if (frames.empty()) throw FrameError("", "malformed message: no frames");
    std::string_view first(frames[0]);
    auto p = parse_first(reinterpret_cast<const uint8_t*>(first.data()), first.size(), lim);
    std::vector<size_t> sizes;
    for (size_t i = 1; i < frames.size(); ++i) sizes.push_back(std::string_view(frames[i]).size());
    if (p.kind == Kind::Data) check_payloads(p, sizes);
    return py::make_tuple(int(p.kind), py::bytes(reinterpret_cast<const char*>(p.header), p.header_len), p.sizes);
}

}  // namespace

PYBIND11_MODULE(_transport, m) {
    m.doc() = "C++ ZeroMQ transport (private; use vllm_helix.comm.Endpoint)";
    m.attr("WIRE_VERSION") = int(kWireVersion);

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const PeerLostError& e) {
            raise_helix("PeerLost", e.what(), e.peer);
        } catch (const FrameError& e) {
            raise_helix("FrameRejected", e.what(), e.peer);
        } catch (const TransportError& e) {
            raise_helix("HelixError", e.what(), "");
        }
    });

    py::class_<Limits>(m, "Limits")
        .def(py::init<>())
        .def_readwrite("max_header_bytes", &Limits::max_header_bytes)
        .def_readwrite("max_payload_bytes", &Limits::max_payload_bytes)
        .def_readwrite("max_payloads", &Limits::max_payloads);

    py::class_<Options>(m, "Options")
        .def(py::init<>())
        .def_readwrite("heartbeat_s", &Options::heartbeat_s)
        .def_readwrite("peer_timeout_s", &Options::peer_timeout_s)
        .def_readwrite("linger_s", &Options::linger_s)
        .def_readwrite("send_queue_msgs", &Options::send_queue_msgs)
        .def_readwrite("send_queue_bytes", &Options::send_queue_bytes)
        .def_readwrite("recv_queue_msgs", &Options::recv_queue_msgs)
        .def_readwrite("recv_queue_bytes", &Options::recv_queue_bytes)
        .def_readwrite("zmq_hwm_msgs", &Options::zmq_hwm_msgs)
        .def_readwrite("copy_below", &Options::copy_below)
        .def_readwrite("limits", &Options::limits)
        .def_readwrite("curve_public", &Options::curve_public)
        .def_readwrite("curve_secret", &Options::curve_secret)
        .def_readwrite("curve_allow", &Options::curve_allow);

    py::class_<Payload>(m, "Payload", py::buffer_protocol())
        .def_buffer([](Payload& p) {
            return py::buffer_info(p.msg->payload_data(p.index), 1, py::format_descriptor<uint8_t>::format(), 1,
                                   {py::ssize_t(p.msg->payload_size(p.index))}, {py::ssize_t(1)}, false);
        })
        .def("__len__", [](const Payload& p) { return p.msg->payload_size(p.index); });

    py::class_<Endpoint>(m, "Endpoint")
        .def(py::init([](std::string name, const std::string& bind, Options opts) {
                 return new Endpoint(std::move(name), bind, std::move(opts), &release_pybuffer);
             }),
             py::arg("name"), py::arg("bind"), py::arg("options"), py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("name", &Endpoint::name)
        .def_property_readonly("address", &Endpoint::address)
        .def("connect", &Endpoint::connect, py::arg("peer"), py::arg("address"), py::arg("server_key") = "",
             py::call_guard<py::gil_scoped_release>())
        .def("send", &send, py::arg("peer"), py::arg("header"), py::arg("payloads"), py::arg("timeout_s"))
        .def("recv", &recv, py::arg("timeout_s"))
        .def("recv_many", &recv_many, py::arg("max_n"), py::arg("timeout_s"))
        .def("peers", &Endpoint::peers)
        .def("rekey", &Endpoint::rekey, py::arg("peer"), py::arg("server_key"),
             py::call_guard<py::gil_scoped_release>())
        .def("redial", &Endpoint::redial, py::arg("peer"), py::call_guard<py::gil_scoped_release>())
        .def("set_allowed", &Endpoint::set_allowed, py::arg("keys"))
        .def("take_denied", &Endpoint::take_denied)
        .def("stats",
             [](const Endpoint& ep) {
                 Stats s = ep.stats();
                 return py::dict(py::arg("sent") = s.sent, py::arg("received") = s.received,
                                 py::arg("rejected") = s.rejected, py::arg("auth_denied") = s.auth_denied,
                                 py::arg("heartbeats_sent") = s.heartbeats_sent,
                                 py::arg("heartbeats_received") = s.heartbeats_received,
                                 py::arg("peers_lost") = s.peers_lost);
             })
        .def("close", [](Endpoint& ep) {
            {
                py::gil_scoped_release nogil;
                ep.close();
            }
            ep.drain_released();
        });

    m.def("parse_message", &parse_message, py::arg("frames"), py::arg("limits"),
          "Validate one multipart message as the receiver does; returns (kind, header, sizes) or raises FrameRejected.");
    m.def(
        "encode_first",
        [](int kind, const std::vector<uint64_t>& sizes, const py::bytes& header) {
            std::string_view h(header);
            if (kind < 0 || kind > 2) throw std::invalid_argument("kind must be 0 (data), 1 (ping) or 2 (bye)");
            return py::bytes(encode_first(Kind(kind), sizes, h.data(), h.size()));
        },
        py::arg("kind"), py::arg("sizes"), py::arg("header"));
    m.def("curve_keypair", &curve_keypair, "New CURVE key pair (public, secret), Z85 text.");
    m.def("curve_public", &curve_public, py::arg("secret"), "The public key (Z85) of a Z85 secret key.");
    m.def("has_curve", &has_curve);
}
