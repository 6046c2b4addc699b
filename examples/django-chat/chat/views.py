from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from chat.consumers import room_group


def index(request):
    return render(request, "chat/index.html")


@ensure_csrf_cookie  # the page's script posts announcements with the CSRF token
def room(request, room_name):
    return render(request, "chat/room.html", {"room_name": room_name})


@require_POST
def announce(request, room_name):
    """An ordinary Django view talking to the room's WebSockets through the channel layer."""
    text = request.POST.get("text", "").strip()
    if not text:
        return HttpResponse("nothing to announce", status=400)
    async_to_sync(get_channel_layer().group_send)(
        room_group(room_name), {"type": "chat.message", "message": f"announcement: {text}"}
    )
    return HttpResponse(status=204)
