"""The provider's secure web inbox (issue 13): staff sign-in, the intake list, opening a referral
on demand, and recording outcomes that go back to the force. Served beside the reference
receiver (`inbox_app`) on the bounded server by `referral-bridge provider inbox --users FILE`."""
