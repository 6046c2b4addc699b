const roomName = JSON.parse(document.getElementById("room-name").textContent);
const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
const chatSocket = new WebSocket(scheme + window.location.host + "/ws/chat/" + roomName + "/");
const state = document.querySelector("#state");
const input = document.querySelector("#chat-message-input");

chatSocket.onopen = function () {
    state.textContent = "connected";
};
chatSocket.onmessage = function (e) {
    const data = JSON.parse(e.data);
    document.querySelector("#chat-log").value += data.message + "\n";
};
chatSocket.onclose = function () {
    state.textContent = "closed";
    console.error("Chat socket closed unexpectedly");
};

input.focus();
input.onkeyup = function (e) {
    if (e.key === "Enter") {
        document.querySelector("#chat-message-submit").click();
    }
};
document.querySelector("#chat-message-submit").onclick = function () {
    chatSocket.send(JSON.stringify({ message: input.value }));
    input.value = "";
};

// The same room, reached from an ordinary Django view (POST + CSRF token) instead of the socket.
function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
}
document.querySelector("#chat-announce-submit").onclick = function () {
    const body = new URLSearchParams({ text: input.value });
    input.value = "";
    fetch("announce/", { method: "POST", body: body, headers: { "X-CSRFToken": csrfToken() } });
};
