"""The spec's four unit tests, adapted only by draining the queue between the
POST and the assertions (the endpoint writes to Redis; the worker to PostgreSQL).
"""

from django.contrib.auth import get_user_model
from django.test import TestCase
from rest_framework.test import APIClient

from server.apps.front.pipeline.writer import drain

from ..models import ABEvent

User = get_user_model()


class ABEventTestCase(TestCase):
    def setUp(self):
        self.client = APIClient()
        self.user = User.objects.create_user(username="testuser", email="test@example.com", password="testpass123")

    def test_create_anonymous_event(self):
        """An anonymous user can send an event."""
        data = {
            "session_id": "test-session-123",
            "variant": "fast",
            "event_type": "variant_assigned",
        }

        response = self.client.post("/api/rest/front/ab-event/", data)
        drain()

        self.assertEqual(response.status_code, 201)
        self.assertTrue(response.data["success"])

        event = ABEvent.objects.first()
        self.assertIsNotNone(event)
        self.assertEqual(event.session_id, "test-session-123")
        self.assertEqual(event.variant, "fast")
        self.assertIsNone(event.user)

    def test_create_authenticated_event(self):
        """An authenticated user's event is linked to that user."""
        self.client.force_authenticate(user=self.user)

        data = {
            "session_id": "test-session-456",
            "variant": "deep",
            "event_type": "onboarding_started",
        }

        response = self.client.post("/api/rest/front/ab-event/", data)
        drain()

        self.assertEqual(response.status_code, 201)

        event = ABEvent.objects.first()
        self.assertEqual(event.user, self.user)

    def test_invalid_variant(self):
        """An invalid variant is rejected."""
        data = {
            "session_id": "test-session-789",
            "variant": "invalid",
            "event_type": "variant_assigned",
        }

        response = self.client.post("/api/rest/front/ab-event/", data)
        drain()

        self.assertEqual(response.status_code, 400)
        self.assertFalse(response.data["success"])

    def test_step_completed_with_metadata(self):
        """An event with metadata is stored as sent."""
        data = {
            "session_id": "test-session-abc",
            "variant": "fast",
            "event_type": "step_completed",
            "step_number": 2,
            "metadata": {"time_spent_ms": 15000, "category_selected": "health"},
        }

        response = self.client.post("/api/rest/front/ab-event/", data)
        drain()

        self.assertEqual(response.status_code, 201)

        event = ABEvent.objects.first()
        self.assertEqual(event.step_number, 2)
        self.assertEqual(event.metadata["time_spent_ms"], 15000)
        self.assertEqual(event.metadata["category_selected"], "health")
